"""The client examples in examples/ run as written against the real embedded Triton server and print what the
Python client (face2hbe.client's AsyncScorer) gets for the same inputs (issue #26, docs that run)."""

from __future__ import annotations

import ast
import asyncio
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from face2hbe import contract
from face2hbe.detection import detect_faces, face_crops
from face2hbe.imaging import decode_rgb

from conftest import ROOT, SAMPLES

EXAMPLES = ROOT / "examples"
CROPS, PHOTOS = EXAMPLES / "crops.py", EXAMPLES / "photos.py"
# An example is for users of any client: tritonclient, numpy, Pillow and the standard library, never face2hbe.
ALLOWED_IMPORTS = {"argparse", "json", "sys", "numpy", "PIL", "tritonclient"}


def _constants(path: Path) -> dict:
    """The module-level constants of a script (MODEL, INPUT, OUTPUTS), read without running it."""
    tree = ast.parse(path.read_text())
    return {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id.isupper()
    }


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add((node.module or "").split(".")[0])
    return found


def _run(script: Path, grpc_url: str, *paths) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script), *map(str, paths), "--url", grpc_url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def _python_client(grpc_url: str, call):
    """Run `call(scorer)` on face2hbe's own client, connected to the server; returns (its result, its ModelInfo)."""
    from face2hbe.client.inference import AsyncScorer, ClientSettings

    async def go():
        async with AsyncScorer(ClientSettings(url=grpc_url)) as scorer:
            return await call(scorer), scorer.info

    return asyncio.run(go())


def test_examples_use_the_contracts_names_and_no_face2hbe():
    assert _constants(CROPS) == {
        "MODEL": contract.MODEL_NAME,
        "INPUT": contract.INPUT_NAME,
        "OUTPUTS": (contract.OUTPUT_NAME, contract.ATTRIBUTES_NAME),
    }
    assert _constants(PHOTOS) == {
        "MODEL": contract.PHOTO_MODEL_NAME,
        "INPUT": contract.PHOTO_INPUT_NAME,
        "OUTPUTS": (
            contract.BOXES_NAME,
            contract.OUTPUT_NAME,
            contract.ATTRIBUTES_NAME,
            contract.DETECTION_SCORES_NAME,
        ),
    }
    for script in (CROPS, PHOTOS):
        text = script.read_text()
        assert _imports(script) <= ALLOWED_IMPORTS, script.name
        # The datatypes it sends are the contract's; labels and thresholds are read from the served config.
        dtype = contract.INPUT_DTYPE if script == CROPS else contract.PHOTO_INPUT_DTYPE
        assert f'"{dtype}"' in text and "get_model_config" in text
        assert not re.search(r"\b(eyewear|beard|hat)\b", text), f"{script.name} hard-codes labels"
        assert len(text.splitlines()) <= 60, f"{script.name}: an example stays short"


CROP_LINE = re.compile(r"  (\S+) +(\d\.\d{6})  (yes|no) +\(threshold ([\d.]+)\)")


def test_crops_example_prints_the_python_clients_scores(grpc_url, tmp_path):
    """Face crops made here with the client's detection and crop (face2hbe.detection), saved losslessly."""
    paths, crops = [], []
    for name in ("grace_hopper.jpg", "glasses_codait_bryan.png", "group_apollo_11_crew.jpg"):
        image = decode_rgb((SAMPLES / name).read_bytes())
        for i, crop in enumerate(face_crops(image, detect_faces(image))):
            paths.append(tmp_path / f"{Path(name).stem}_{i}.png")
            Image.fromarray(crop).save(paths[-1])
            crops.append(crop)
    assert len(paths) >= 5

    done = _run(CROPS, grpc_url, *paths)
    assert done.returncode == 0, done.stderr
    want, info = _python_client(grpc_url, lambda scorer: scorer.score(np.stack(crops)))

    blocks = done.stdout.split("\n" + str(tmp_path))  # one block per crop: its path, then one line per label
    assert done.stdout.startswith(str(paths[0])) and len(blocks) == len(paths)
    for path, block, row in zip(paths, blocks, want):
        printed = [CROP_LINE.fullmatch(line) for line in block.splitlines()[1:]]
        assert all(printed), block
        assert [m[1] for m in printed] == info.labels, path.name  # every served label, in the config's order
        np.testing.assert_allclose([float(m[2]) for m in printed], row, atol=1e-5, err_msg=path.name)
        for m in printed:
            assert float(m[4]) == info.thresholds[m[1]]
            assert (m[3] == "yes") == (float(m[2]) >= info.thresholds[m[1]])


BOX_LINE = re.compile(r"  box top=(\d+) right=(\d+) bottom=(\d+) left=(\d+) detection=(\d\.\d{6})")
SCORE_LINE = re.compile(r"    (\S+) +(\d\.\d{6})  (yes|no)")


def _photo_answers(stdout: str) -> dict[str, list[tuple[list[int], float, dict[str, float]]]]:
    """{photo: [(box, detection score, {label: score})]} from photos.py's output."""
    found, faces = {}, None
    for line in stdout.splitlines():
        if head := re.fullmatch(r"(\S+): (\d+) face\(s\)", line):
            faces = found[head[1]] = []
        elif box := BOX_LINE.fullmatch(line):
            faces.append(([int(v) for v in box.groups()[:4]], float(box[5]), {}))
        else:
            score = SCORE_LINE.fullmatch(line)
            assert score, f"unexpected line {line!r}"
            faces[-1][2][score[1]] = float(score[2])
    return found


def test_photos_example_prints_the_python_clients_faces(grpc_url):
    photos = [
        SAMPLES / name
        for name in ("grace_hopper.jpg", "glasses_codait_bryan.png", "group_apollo_11_crew.jpg", "no_face_china.jpg")
    ]
    done = _run(PHOTOS, grpc_url, *photos)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    printed = _photo_answers(done.stdout)
    assert list(printed) == [str(p) for p in photos]

    async def every_photo(scorer):
        return [await scorer.score_photo(p.read_bytes(), p.name) for p in photos]

    answers, info = _python_client(grpc_url, every_photo)
    faces = 0
    for photo, (boxes, rows, detections) in zip(photos, answers):
        got = printed[str(photo)]
        assert [box for box, _, _ in got] == boxes.tolist(), photo.name
        np.testing.assert_allclose([d for _, d, _ in got], detections, atol=1e-5)
        for (_, _, scores), row in zip(got, rows):
            assert list(scores) == info.labels
            np.testing.assert_allclose(list(scores.values()), row, atol=1e-5, err_msg=photo.name)
        faces += len(got)
    assert faces >= 5 and printed[str(SAMPLES / "no_face_china.jpg")] == []
    yes = [line for line in done.stdout.splitlines() if line.endswith("yes")]
    assert any("hat" in line for line in yes) and any("eyewear" in line for line in yes)


def test_photos_example_reports_a_refused_photo_in_one_line(grpc_url, tmp_path):
    """Not an image: one line naming INVALID_ARGUMENT and the server's reason, exit code 1; the next photo is
    still answered."""
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"not a photo\n" * 20)
    done = _run(PHOTOS, grpc_url, bad, SAMPLES / "grace_hopper.jpg")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"{bad}: StatusCode.INVALID_ARGUMENT: photo: not a recognised image format"]
    assert len(_photo_answers(done.stdout)[str(SAMPLES / "grace_hopper.jpg")]) == 1


@pytest.mark.parametrize("script", [CROPS, PHOTOS], ids=lambda p: p.name)
def test_example_help_runs_without_a_server(script):
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--url" in done.stdout and "localhost:8001" in done.stdout
