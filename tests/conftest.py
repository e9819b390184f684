"""Shared fixtures: real data from ../shared/data, a live embedded Triton server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from face2hbe.net import free_port  # noqa: F401  (tests import it from here)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FACE2HBE_SHARED_DATA", ROOT.parent / "shared" / "data"))
REPOSITORY = ROOT / "model_repository"
SAMPLES = ROOT / "client" / "samples"


def hold_at(folder: Path, point: str, count: int) -> tuple[dict[str, str], Path]:
    """The test hook (client/hold.py): environment that makes a process hold at `point` after `count` passes
    (`record`, `prepare`, `score`), and the file whose creation releases it; the holder's pid is in <point>.pid."""
    from face2hbe.client.hold import ENV

    folder.mkdir(parents=True, exist_ok=True)
    (folder / point).write_text(str(count))
    return {ENV: str(folder)}, folder / f"{point}.release"


@pytest.fixture(scope="session")
def celeba_dir() -> Path:
    path = SHARED_DATA / "celeba"
    if not (path / "labels.csv").is_file():
        pytest.skip(f"real CelebA faces not found at {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def celeba_more_dir() -> Path:
    path = SHARED_DATA / "celeba_more"
    if not (path / "identity_CelebA.txt").is_file():
        pytest.skip(f"real CelebA faces with identities not found at {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def lfw_dir() -> Path:
    path = SHARED_DATA / "lfw"
    if not (path / "labels.csv").is_file():
        pytest.skip(f"real LFW photos not found at {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def server():
    """The committed model repository served by the real embedded Triton server on free ports."""
    from face2hbe.serving.embedded import EmbeddedServer, ServerSettings

    settings = ServerSettings(REPOSITORY, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with EmbeddedServer(settings) as srv:
        yield srv


@pytest.fixture(scope="session")
def grpc_url(server) -> str:
    return f"127.0.0.1:{server.settings.grpc_port}"


@pytest.fixture(scope="session")
def http_url(server) -> str:
    return f"127.0.0.1:{server.settings.http_port}"


@pytest.fixture(scope="session")
def lfw_sample(lfw_dir):
    """A few LFW photos with their pseudo-labels, fixed for repeatability."""
    import csv

    rows = list(csv.DictReader((lfw_dir / "labels.csv").open()))
    picked = [r for r in rows if r["eyewear"] == "1"][:3] + [r for r in rows if r["eyewear"] == "0"][:3]
    return [(lfw_dir / r["path"], r) for r in picked]
