"""The INT8 CPU model (model_repository/face2hbe_int8) against the fp32 model on real face crops.

Tolerances come from the measurement in docs/serving.md (`make int8`), with margin:
mean |fp32 - int8| <= MEAN_ABS_TOL on real crops, per-label ROC AUC drop <= AUC_DROP_TOL
on the held-out CelebA range.
"""

from __future__ import annotations

import numpy as np
import pytest

from face2hbe import contract
from face2hbe.repository import onnx_io

from conftest import REPOSITORY, SAMPLES

FP32 = REPOSITORY / contract.MODEL_NAME / contract.MODEL_VERSION / "model.onnx"
INT8 = REPOSITORY / f"{contract.MODEL_NAME}_int8" / contract.MODEL_VERSION / "model.onnx"
MEAN_ABS_TOL = 0.05
AUC_DROP_TOL = 0.02

pytestmark = pytest.mark.skipif(
    not INT8.is_file(), reason=f"{INT8} absent: run `face2hbe export --format int8` (make int8)"
)


@pytest.fixture(scope="module")
def sessions():
    from face2hbe.graphs import cpu_session

    return cpu_session(FP32), cpu_session(INT8)


@pytest.fixture(scope="module")
def real_crops(celeba_dir):
    from face2hbe.export.quantize import celeba_crops

    crops, _ = celeba_crops(celeba_dir, 7001, 7024)  # held out from calibration (images 1-300)
    return crops


def test_int8_graph_io_matches_contract():
    io = onnx_io(INT8)
    assert io["inputs"] == {contract.INPUT_NAME: ("uint8", [-1, *contract.INPUT_SHAPE])}
    assert io["outputs"] == {
        contract.OUTPUT_NAME: ("float32", [-1, len(contract.LABELS)]),
        contract.ATTRIBUTES_NAME: ("float32", [-1, len(contract.ATTRIBUTE_LABELS)]),
    }


def test_int8_is_quantized_and_smaller():
    import onnx

    ops = {n.op_type for n in onnx.load(str(INT8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert INT8.stat().st_size < 0.5 * FP32.stat().st_size


def test_int8_scores_close_to_fp32_on_real_crops(sessions, real_crops):
    from face2hbe.graphs import score_crops

    fp32, int8 = (score_crops(s, real_crops) for s in sessions)
    assert int8.shape == fp32.shape == (len(real_crops), len(contract.LABELS))
    assert int8.dtype == np.float32 and np.all((int8 >= 0) & (int8 <= 1))
    assert float(np.abs(fp32 - int8).mean()) <= MEAN_ABS_TOL


def test_int8_runs_on_sample_photo_faces(sessions):
    from face2hbe.export.quantize import sample_crops
    from face2hbe.graphs import score_crops

    crops = sample_crops(SAMPLES)
    fp32, int8 = (score_crops(s, crops) for s in sessions)
    assert float(np.abs(fp32 - int8).mean()) <= MEAN_ABS_TOL


@pytest.mark.slow  # crops and scores 1,000 CelebA images twice: over a minute on 2 shared cores
def test_int8_auc_drop_on_heldout_celeba(celeba_dir):
    from face2hbe.export.quantize import EVAL_RANGE, celeba_crops, compare

    crops, targets = celeba_crops(celeba_dir, *EVAL_RANGE)
    report = compare(FP32, INT8, crops, targets, "test", "test")
    for label in contract.LABELS:
        a, b = report.auc_fp32[label], report.auc_int8[label]
        assert a is not None and b is not None
        assert a - b <= AUC_DROP_TOL, f"{label}: ROC AUC {a:.4f} fp32 -> {b:.4f} int8"
    assert report.mean_abs_diff <= MEAN_ABS_TOL


def _served_scores(grpc_url: str, batch: np.ndarray) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    inp = grpcclient.InferInput(contract.INPUT_NAME, list(batch.shape), contract.INPUT_DTYPE)
    inp.set_data_from_numpy(batch)
    assert contract.PARAM_THRESHOLDS in client.get_model_config(contract.MODEL_NAME).config.parameters
    return client.infer(contract.MODEL_NAME, [inp]).as_numpy(contract.OUTPUT_NAME)


def test_the_cpu_default_is_int8_under_the_contract_name(server, grpc_url):
    """`face2hbe serve` (the CPU default, docs/serving.md): clients call `face2hbe` and get the INT8 file's scores."""
    import onnxruntime as ort

    assert server.onnx_path == INT8 and server.settings.graph == "mirror"
    batch = np.random.default_rng(3).integers(0, 256, (2, *contract.INPUT_SHAPE), dtype=np.uint8)
    (direct,) = ort.InferenceSession(str(INT8), providers=["CPUExecutionProvider"]).run(
        [contract.OUTPUT_NAME], {contract.INPUT_NAME: batch}
    )
    np.testing.assert_allclose(_served_scores(grpc_url, batch), direct, atol=1e-6)


def test_fp32_and_plain_graph_are_one_flag_away():
    """`face2hbe serve --precision fp32 --graph plain`: the fp32 file without its mirror pass, still called `face2hbe`."""
    import onnxruntime as ort

    from face2hbe.graphs import load_graph
    from face2hbe.serving.embedded import EmbeddedServer, ServerSettings

    from conftest import free_port

    settings = ServerSettings(
        REPOSITORY,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        precision="fp32",
        graph="plain",
        photo=False,
    )
    batch = np.random.default_rng(3).integers(0, 256, (2, *contract.INPUT_SHAPE), dtype=np.uint8)
    with EmbeddedServer(settings) as server:
        assert server.onnx_path == FP32
        served = _served_scores(f"127.0.0.1:{settings.grpc_port}", batch)
    plain = ort.InferenceSession(load_graph(FP32, "plain"), providers=["CPUExecutionProvider"])
    (direct,) = plain.run([contract.OUTPUT_NAME], {contract.INPUT_NAME: batch})
    np.testing.assert_allclose(served, direct, atol=1e-6)
