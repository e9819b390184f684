# Everything the project needs is installed from here: `make demo`, `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Pytest options for CI-sized runs (slow tests are marked and skipped by default).
PYTEST_ARGS ?= -m "not slow and not gpu"

.PHONY: install demo test test-all serve lint audit clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	# face_recognition's metadata asks for dlib, which builds from source for a long
	# time; dlib-bin (a dependency above) provides the same `import dlib`.
	$(PY) -m pip install -q --no-deps "face-recognition==1.3.0"
	touch $(STAMP)

install: $(STAMP)

## demo: start the embedded Triton server, recommend for the bundled sample photos, stop.
demo: $(STAMP)
	$(PY) -m face2hbe.demo --output out/demo-results.jsonl

## test: the CI suite (needs ../shared/data for the real-photo tests; they skip without it).
test: $(STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-all: $(STAMP)
	$(VENV)/bin/pytest -m "not gpu"

serve: $(STAMP)
	$(VENV)/bin/face2hbe serve

clean:
	rm -rf $(VENV) out .pytest_cache
