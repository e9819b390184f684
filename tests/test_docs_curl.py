"""The curl examples in docs/kserve-contract.md run as written against the real embedded Triton server (issue #26,
docs that run): each shell block is run by bash as it stands in the doc, with only the port changed (8000 -> the
server's HTTP port, 8001 -> its gRPC port), and must exit 0 with the answers the doc describes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from markdown_it import MarkdownIt

from face2hbe import contract

from conftest import ROOT

DOC = ROOT / "docs" / "kserve-contract.md"
TOKENS = MarkdownIt("commonmark").parse(DOC.read_text())
SHELL = ("sh", "bash", "shell")
BLOCKS = [
    (i, t.content)
    for i, t in enumerate(TOKENS)
    if t.type == "fence" and t.info.strip() in SHELL and "curl " in t.content
]


def _id(block: tuple[int, str]) -> str:
    return f"{DOC.name}:{TOKENS[block[0]].map[0] + 2}"  # the block's first line


def _next_json(index: int):
    """The first JSON block after block `index`: the answer the doc shows for it."""
    return next(json.loads(t.content) for t in TOKENS[index + 1 :] if t.type == "fence" and t.info.strip() == "json")


def _answers(stdout: str) -> list:
    """What the block printed: HTTP status codes (`-w '%{http_code}'`) and JSON documents, in order."""
    decoder, found, text = json.JSONDecoder(), [], stdout.strip()
    while text:
        if code := re.match(r"\d{3}\b", text):
            found.append(int(code[0]))
            text = text[code.end() :].lstrip()
        else:
            value, end = decoder.raw_decode(text)
            found.append(value)
            text = text[end:].lstrip()
    return found


def _run(block: str, http_url: str, grpc_url: str) -> subprocess.CompletedProcess:
    http_port, grpc_port = http_url.rsplit(":", 1)[1], grpc_url.rsplit(":", 1)[1]
    script = re.sub(r"\b(localhost|127\.0\.0\.1):8000\b", rf"\g<1>:{http_port}", block)
    script = re.sub(r"\b(localhost|127\.0\.0\.1):8001\b", rf"\g<1>:{grpc_port}", script)
    assert script != block, "the block names no server address to point at the test's server"
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_the_doc_has_its_curl_blocks():
    """Health and config, a JSON inference, a photo with the binary-data extension, and grpcurl."""
    text = [content for _, content in BLOCKS]
    assert len(text) == 4
    assert any("/ready" in b and "/config" in b for b in text)
    assert any("face2hbe/infer" in b for b in text) and any("face2hbe_photo/infer" in b for b in text)
    assert any(b.startswith("grpcurl ") for b in text)
    assert shutil.which("curl") and shutil.which("jq"), "curl and jq run the doc's examples"


@pytest.mark.parametrize("block", BLOCKS, ids=_id)
def test_curl_block_runs_as_written(block, http_url, grpc_url):
    index, content = block
    if content.startswith("grpcurl ") and shutil.which("grpcurl") is None:
        pytest.skip("grpcurl is not installed on this machine (a Go binary; no Go downloads here): block not run")
    done = _run(content, http_url, grpc_url)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr}"
    answers = _answers(done.stdout)
    assert answers, "the block printed nothing"
    for answer in answers:
        if isinstance(answer, int):
            assert answer == 200, f"HTTP {answer}:\n{done.stdout}"
        else:
            assert "error" not in answer, answer

    if "/v2/health/ready" in content:
        ready, model_ready, metadata, parameters = answers
        assert ready == model_ready == 200
        assert metadata["name"] == contract.MODEL_NAME
        assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
            (contract.INPUT_NAME, contract.INPUT_DTYPE, [-1, *contract.INPUT_SHAPE])
        ]
        assert {t["name"] for t in metadata["outputs"]} == {contract.OUTPUT_NAME, contract.ATTRIBUTES_NAME}
        assert parameters[contract.PARAM_LABELS]["string_value"] == ",".join(contract.LABELS)
        thresholds = json.loads(parameters[contract.PARAM_THRESHOLDS]["string_value"])
        assert set(thresholds) == set(contract.SERVED_LABELS)
        # The doc's example thresholds are today's (a stale copy misleads: they were 0.505/0.535/0.515).
        shown = re.search(r"`(\{\"eyewear\": [^`]*), \.\.\.\}`", DOC.read_text())[1] + "}"
        assert json.loads(shown) == {k: thresholds[k] for k in json.loads(shown)}, f"today's: {thresholds}"
    elif "face2hbe/infer" in content:
        (answer,) = answers
        assert answer["model_name"] == contract.MODEL_NAME
        (scores,) = answer["outputs"]
        assert (scores["name"], scores["datatype"], scores["shape"]) == (contract.OUTPUT_NAME, "FP32", [1, 3])
        assert all(0 <= s <= 1 for s in scores["data"])
    elif "face2hbe_photo/infer" in content:
        (answer,) = answers
        shown = _next_json(index)  # the doc's answer for this photo, rounded to 2 decimals
        got = {o["name"]: o for o in answer["outputs"]}
        rounded = {name: [round(v, 2) for v in o["data"]] for name, o in got.items()}
        assert answer["model_name"] == shown["model_name"] == contract.PHOTO_MODEL_NAME
        for output in shown["outputs"]:
            name = output["name"]
            assert (got[name]["datatype"], got[name]["shape"]) == (output["datatype"], output["shape"]), name
            if name == contract.BOXES_NAME:
                assert got[name]["data"] == output["data"]
            else:
                assert got[name]["data"] == pytest.approx(output["data"], abs=0.0051), (
                    f"doc's answer is stale: {rounded}"
                )
