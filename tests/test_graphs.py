"""The plain graph derived from a served mirror-averaged file: same network, one pass per face."""

from __future__ import annotations

import numpy as np
import pytest

from face2hbe import contract
from face2hbe.errors import ModelRepositoryError
from face2hbe.graphs import is_mirror_averaged, load_graph, plain_graph
from face2hbe.repository import MIRROR_AVERAGE_KEY, ONNX_FILE

from conftest import REPOSITORY, SAMPLES


@pytest.fixture(scope="module")
def crops():
    from face2hbe.detection import photo_face_crops

    found = photo_face_crops(sorted(SAMPLES.iterdir()))
    assert len(found) >= 2
    return found


@pytest.mark.parametrize("folder", [contract.MODEL_NAME, contract.INT8_MODEL_NAME])
def test_plain_graph_is_half_of_the_mirror_average(folder, crops):
    """mirror(x) == (plain(x) + plain(flip(x))) / 2: the plain graph is the same network without the mirror branch."""
    import onnx
    import onnxruntime as ort

    path = REPOSITORY / folder / contract.MODEL_VERSION / ONNX_FILE
    model = onnx.load(str(path))
    assert is_mirror_averaged(model)
    plain = plain_graph(model)
    assert not is_mirror_averaged(plain) and len(plain.graph.node) < len(model.graph.node)
    assert [o.name for o in plain.graph.output] == [o.name for o in model.graph.output]
    if any(p.key == MIRROR_AVERAGE_KEY for p in model.metadata_props):
        assert {p.key: p.value for p in plain.metadata_props}[MIRROR_AVERAGE_KEY] == "false"

    def run(graph_bytes, x):
        session = ort.InferenceSession(graph_bytes, providers=["CPUExecutionProvider"])
        return session.run([contract.OUTPUT_NAME], {contract.INPUT_NAME: x})[0]

    mirrored = run(load_graph(path, "mirror"), crops)
    one = run(plain.SerializeToString(), crops)
    flipped = run(load_graph(path, "plain"), np.ascontiguousarray(crops[:, :, ::-1]))
    np.testing.assert_allclose(mirrored, (one + flipped) / 2, atol=1e-5)
    assert np.abs(one - mirrored).max() > 1e-4  # really one pass: not the average again

    with pytest.raises(ModelRepositoryError, match="no mirror branch"):
        plain_graph(plain)
    with pytest.raises(ValueError, match="graph must be one of"):
        load_graph(path, "flipped")
