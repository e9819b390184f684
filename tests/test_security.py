"""Security defaults: loopback only, hostile requests refused, nothing written, pinned dependencies."""
from __future__ import annotations

import ipaddress
import os
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from face2hbe import contract
from face2hbe.imaging import IMAGE_SUFFIXES

from conftest import ROOT, SAMPLES

CROP_SUFFIXES = {*IMAGE_SUFFIXES, ".npy", ".npz"}  # where face crops could hide


# --- loopback by default -------------------------------------------------------------------


def test_defaults_are_loopback():
    from face2hbe.cli import cli
    from face2hbe.client.inference import DEFAULT_URLS
    from face2hbe.serving.embedded import ServerSettings

    host = next(p for p in cli.commands["serve"].params if p.name == "host")
    assert host.default == "127.0.0.1"
    assert ServerSettings(repository=Path(".")).host == "127.0.0.1"
    assert all(url.startswith("127.0.0.1:") for url in DEFAULT_URLS.values())


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def test_server_sockets_listen_on_loopback_only(server):
    import psutil

    ports = {server.settings.http_port, server.settings.grpc_port, server.settings.metrics_port}
    listening = []
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            listening += [c.laddr for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            continue
    served = [addr for addr in listening if addr.port in ports]
    assert {addr.port for addr in served} == ports, f"server ports not found among {listening}"
    assert all(_is_loopback(addr.ip) for addr in served), served


def test_non_loopback_address_is_refused(server):
    import psutil

    addresses = [
        a.address for nics in psutil.net_if_addrs().values() for a in nics
        if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback
    ]
    if not addresses:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    for port in (server.settings.grpc_port, server.settings.http_port):
        with pytest.raises(OSError):  # ConnectionRefusedError (or a timeout behind a firewall)
            socket.create_connection((addresses[0], port), timeout=2).close()


# --- hostile requests ------------------------------------------------------------------------


def _grpc(grpc_url):
    import tritonclient.grpc as grpcclient

    return grpcclient, grpcclient.InferenceServerClient(grpc_url)


def _still_serves(module, client) -> None:
    ok = module.InferInput(contract.INPUT_NAME, [1, *contract.INPUT_SHAPE], contract.INPUT_DTYPE)
    ok.set_data_from_numpy(np.zeros((1, *contract.INPUT_SHAPE), np.uint8))
    scores = client.infer(contract.MODEL_NAME, [ok]).as_numpy(contract.OUTPUT_NAME)
    assert scores.shape == (1, len(contract.LABELS))


def test_empty_batch_is_refused(grpc_url):
    from tritonclient.utils import InferenceServerException

    module, client = _grpc(grpc_url)
    inp = module.InferInput(contract.INPUT_NAME, [0, *contract.INPUT_SHAPE], contract.INPUT_DTYPE)
    inp.set_data_from_numpy(np.zeros((0, *contract.INPUT_SHAPE), np.uint8))
    with pytest.raises(InferenceServerException, match="byte size mismatch|batch"):
        client.infer(contract.MODEL_NAME, [inp])
    _still_serves(module, client)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_64_mb_payloads_are_refused_and_server_stays_up(grpc_url, http_url, protocol):
    """Triton accepts large messages (gRPC up to 2 GB) but refuses them on size before inference."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    module, url = (grpcclient, grpc_url) if protocol == "grpc" else (httpclient, http_url)
    client = module.InferenceServerClient(url)
    too_many = np.zeros((994, *contract.INPUT_SHAPE), np.uint8)  # 64 MiB of real crops, 994 > max batch
    inp = module.InferInput(contract.INPUT_NAME, list(too_many.shape), contract.INPUT_DTYPE)
    inp.set_data_from_numpy(too_many)
    with pytest.raises(InferenceServerException, match=f"batch-size must be <= {contract.MAX_BATCH_SIZE}"):
        client.infer(contract.MODEL_NAME, [inp])
    # 64 MiB of bytes under a header that claims one crop.
    liar = module.InferInput(contract.INPUT_NAME, [1, *contract.INPUT_SHAPE], contract.INPUT_DTYPE)
    liar.set_data_from_numpy(np.zeros((1, *contract.INPUT_SHAPE), np.uint8))
    if protocol == "grpc":
        liar._raw_content = bytes(64 * 1024 * 1024)
    else:
        liar._raw_data = bytes(64 * 1024 * 1024)
        liar._parameters["binary_data_size"] = len(liar._raw_data)
    with pytest.raises(InferenceServerException, match="(?i)byte size|unexpected|size"):
        client.infer(contract.MODEL_NAME, [liar])
    _still_serves(module, client)


# --- nothing on disk or in logs ----------------------------------------------------------------


def test_client_writes_no_images_and_logs_no_pixels(grpc_url, tmp_path):
    home, tmp, cwd, photos = (tmp_path / n for n in ("home", "tmp", "cwd", "photos"))
    for d in (home, tmp, cwd, photos):
        d.mkdir()
    for name in ("grace_hopper.jpg", "astronaut_eileen_collins.jpg", "no_face_china.jpg"):
        (photos / name).symlink_to(SAMPLES / name)
    out = cwd / "results.jsonl"
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp), "XDG_CACHE_HOME": str(home / ".cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "face2hbe.cli", "-v", "recommend", str(photos), "--url", grpc_url, "--output", str(out), "--workers", "1"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()]
    images = [p for p in written if p.suffix.lower() in CROP_SUFFIXES]
    assert images == [], f"image-like files written: {images}"
    assert out in written and len(out.read_text().splitlines()) == 3
    logs = proc.stdout + proc.stderr
    assert "results" in logs and "images" in logs  # the report ran, so the logs are not trivially empty
    assert not re.search(r"[A-Za-z0-9+/=]{200,}", logs), "base64-like blob in the logs"
    assert not re.search(r"array\(|\[\[\[|dtype=uint8", logs), "array dump in the logs"


# --- dependencies --------------------------------------------------------------------------------


def test_every_dependency_has_an_upper_bound():
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    unbounded = []
    for text in requirements:
        req = Requirement(text)
        if req.name == project["name"]:  # an extra of this package itself
            continue
        if not any(spec.operator in ("<", "<=", "==", "~=", "===") for spec in req.specifier):
            unbounded.append(text)
    assert requirements and unbounded == [], f"dependencies without an upper bound: {unbounded}"
