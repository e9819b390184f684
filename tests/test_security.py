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
    from face2hbe.app.cli import cli
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
        a.address
        for nics in psutil.net_if_addrs().values()
        for a in nics
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
        [
            sys.executable,
            "-m",
            "face2hbe.app.cli",
            "-v",
            "recommend",
            str(photos),
            "--url",
            grpc_url,
            "--output",
            str(out),
            "--workers",
            "1",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
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


# --- admin APIs closed --------------------------------------------------------------------------

ADMIN_HTTP = [  # Triton's model control, repository, logging, trace, shared-memory and statistics endpoints
    ("POST", "/v2/repository/index", {}),
    ("POST", f"/v2/repository/models/{contract.MODEL_NAME}/unload", {}),
    ("POST", f"/v2/repository/models/{contract.MODEL_NAME}/load", {}),
    ("GET", "/v2/logging", None),
    ("POST", "/v2/logging", {"log_verbose_level": 0}),
    ("GET", "/v2/trace/setting", None),
    ("POST", "/v2/trace/setting", {"trace_level": ["OFF"]}),
    ("GET", "/v2/systemsharedmemory/status", None),
    ("POST", "/v2/systemsharedmemory/region/crops/register", {"key": "/crops", "offset": 0, "byte_size": 67500}),
    ("POST", "/v2/cudasharedmemory/region/crops/unregister", {}),
    ("GET", f"/v2/models/{contract.MODEL_NAME}/stats", None),
]


def _http(url: str, method: str, path: str, body=None, headers=None) -> tuple[int, bytes]:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"http://{url}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers=headers or {},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.parametrize("method, path, body", ADMIN_HTTP, ids=[f"{m} {p}" for m, p, _ in ADMIN_HTTP])
def test_admin_http_apis_are_closed_to_clients(server, http_url, method, path, body):
    """403 without the server's key (which only the EmbeddedServer object holds); the key opens them, so the 403 is
    Triton's restriction, not a missing endpoint."""
    status, text = _http(http_url, method, path, body)
    assert status == 403 and b"restricted" in text, (status, text)
    status, _ = _http(http_url, method, path, body, server.admin_headers("http"))
    assert status != 403


def test_admin_grpc_protocols_are_closed_to_clients(server, grpc_url):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(grpc_url)
    calls = {
        "repository index": lambda h: client.get_model_repository_index(headers=h),
        "unload": lambda h: client.unload_model(contract.MODEL_NAME, headers=h),
        "log settings": lambda h: client.get_log_settings(headers=h),
        "trace settings": lambda h: client.get_trace_settings(headers=h),
        "shared memory": lambda h: client.register_system_shared_memory("crops", "/crops", 67500, headers=h),
        "statistics": lambda h: client.get_inference_statistics(headers=h),
    }
    for name, call in calls.items():
        with pytest.raises(InferenceServerException, match="restricted") as caught:
            call({})
        assert caught.value.status() == "StatusCode.UNAVAILABLE", name
    assert [
        m["name"]
        for m in client.get_model_repository_index(headers=server.admin_headers("grpc"), as_json=True)["models"]
    ]
    # What clients need stays open: health, metadata, config, inference.
    assert (
        client.is_server_ready()
        and client.get_model_metadata(contract.MODEL_NAME)
        and client.get_model_config(contract.MODEL_NAME)
    )
    _still_serves(grpcclient, client)
    client.close()
