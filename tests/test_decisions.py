"""Issue #27 on real photos: over 150 LFW identities, through the real client and server, no record contradicts itself
(record_checks.contradictions: no SKUs beside a null recommendation, no "no items detected" while a label passes, every
label and SKU re-decided from the record's own numbers). The samples are checked by tests/test_demo.py."""

from __future__ import annotations

import json

import pytest

from face2hbe import contract
from face2hbe.client import Recommender
from face2hbe.client.results import REASONS

from record_checks import contradictions

IDENTITIES = 150


@pytest.mark.slow  # 150 photos detected and scored end to end: a minute or two on 2 shared cores
def test_no_record_contradicts_itself_over_150_lfw_identities(grpc_url, lfw_dir, tmp_path):
    people = sorted(p for p in (lfw_dir / "images").iterdir() if p.is_dir())
    step = len(people) // IDENTITIES
    photos = [min(person.glob("*.jpg")) for person in people[::step][:IDENTITIES]]  # each person's first photo, A to Z
    out = tmp_path / "lfw.jsonl"
    summary = Recommender(url=grpc_url, workers=1).run(photos, out, progress=False)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == summary.images == IDENTITIES and summary.faces >= IDENTITIES
    for record in records:
        assert not contradictions(record), (record["path"], contradictions(record))
    assert {r["reason"] for r in records} <= set(REASONS) | {None}
    # The run means something: attributes pass and are recommended, and some image's pick is an attribute's product.
    picks = {r["top_label"] for r in records if r["top_label"]}
    assert picks & set(contract.ATTRIBUTE_LABELS), picks
    assert sum(bool(r["recommendation"]) for r in records) > IDENTITIES // 2
