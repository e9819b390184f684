"""The real embedded Triton server: KServe v2 over gRPC and HTTP."""

from __future__ import annotations

import numpy as np
import pytest

from face2hbe import contract


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *contract.INPUT_SHAPE), dtype=np.uint8)


def _check_scores(scores: np.ndarray, n: int) -> None:
    assert scores.shape == (n, len(contract.LABELS))
    assert scores.dtype == np.float32
    assert np.all((scores >= 0.0) & (scores <= 1.0))


def test_grpc_batch(grpc_url):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    assert client.is_server_ready() and client.is_model_ready(contract.MODEL_NAME)
    inp = grpcclient.InferInput(contract.INPUT_NAME, [5, *contract.INPUT_SHAPE], contract.INPUT_DTYPE)
    inp.set_data_from_numpy(_batch(5))
    result = client.infer(contract.MODEL_NAME, [inp], outputs=[grpcclient.InferRequestedOutput(contract.OUTPUT_NAME)])
    _check_scores(result.as_numpy(contract.OUTPUT_NAME), 5)


def test_http_batch_matches_grpc(grpc_url, http_url):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    batch = _batch(3, seed=1)
    outs = []
    for module, url in ((httpclient, http_url), (grpcclient, grpc_url)):
        client = module.InferenceServerClient(url)
        inp = module.InferInput(contract.INPUT_NAME, list(batch.shape), contract.INPUT_DTYPE)
        inp.set_data_from_numpy(batch)
        outs.append(client.infer(contract.MODEL_NAME, [inp]).as_numpy(contract.OUTPUT_NAME))
    _check_scores(outs[0], 3)
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)


def test_served_config_carries_labels_and_thresholds(http_url):
    import tritonclient.http as httpclient

    config = httpclient.InferenceServerClient(http_url).get_model_config(contract.MODEL_NAME)
    params = config["parameters"]
    assert params[contract.PARAM_LABELS]["string_value"] == ",".join(contract.LABELS)
    assert contract.PARAM_THRESHOLDS in params
    assert config["max_batch_size"] == contract.MAX_BATCH_SIZE


def test_server_binds_loopback_only(server):
    assert server.settings.host == "127.0.0.1"


@pytest.mark.parametrize(
    "shape, dtype, datatype",
    [
        ((2, 120, 150, 3), np.uint8, "UINT8"),  # wrong shape
        ((2, *contract.INPUT_SHAPE), np.float32, "FP32"),  # wrong dtype
        ((contract.MAX_BATCH_SIZE + 1, *contract.INPUT_SHAPE), np.uint8, "UINT8"),  # batch above maximum
    ],
)
def test_bad_requests_get_errors_and_server_keeps_serving(grpc_url, shape, dtype, datatype):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(grpc_url)
    inp = grpcclient.InferInput(contract.INPUT_NAME, list(shape), datatype)
    inp.set_data_from_numpy(np.zeros(shape, dtype))
    with pytest.raises(InferenceServerException):
        client.infer(contract.MODEL_NAME, [inp])
    ok = grpcclient.InferInput(contract.INPUT_NAME, [1, *contract.INPUT_SHAPE], contract.INPUT_DTYPE)
    ok.set_data_from_numpy(_batch(1))
    _check_scores(client.infer(contract.MODEL_NAME, [ok]).as_numpy(contract.OUTPUT_NAME), 1)


def test_scores_are_bit_identical_to_onnxruntime_in_process(server, grpc_url):
    """Triton changes nothing: the served outputs equal an in-process onnxruntime session on the same file and graph
    (same onnxruntime, its default options), bit for bit, one request at a time so each batch is the request itself."""
    import onnxruntime as ort
    import tritonclient.grpc as grpcclient

    from face2hbe.graphs import load_graph

    session = ort.InferenceSession(
        load_graph(server.onnx_path, server.settings.graph), providers=["CPUExecutionProvider"]
    )
    names = [contract.OUTPUT_NAME, contract.ATTRIBUTES_NAME]
    client = grpcclient.InferenceServerClient(grpc_url)
    for n, seed in ((1, 11), (7, 12), (contract.MAX_BATCH_SIZE, 13)):
        batch = _batch(n, seed)
        inp = grpcclient.InferInput(contract.INPUT_NAME, list(batch.shape), contract.INPUT_DTYPE)
        inp.set_data_from_numpy(batch)
        served = client.infer(
            contract.MODEL_NAME, [inp], outputs=[grpcclient.InferRequestedOutput(name) for name in names]
        )
        for name, local in zip(names, session.run(names, {contract.INPUT_NAME: batch})):
            assert served.as_numpy(name).dtype == local.dtype
            np.testing.assert_array_equal(served.as_numpy(name), local, err_msg=f"{name}, batch {n}")
    client.close()


def test_served_config_is_the_committed_one_in_cpu_form(server, http_url):
    """Python backend on CPUs, no GPU accelerators; batching and parameters as committed; the committed warm-ups up
    to the rows of one onnxruntime run (8: a batch of 32 runs as four of them, which the batch-8 warm-up made)."""
    import tritonclient.http as httpclient

    from face2hbe.repository import config_from_json, model_config_pb2

    served = config_from_json(httpclient.InferenceServerClient(http_url).get_model_config(contract.MODEL_NAME))
    committed = server.config
    assert served.backend == "python" and not served.platform
    assert [(g.kind, g.count) for g in served.instance_group] == [(model_config_pb2().ModelInstanceGroup.KIND_CPU, 1)]
    assert not served.optimization.execution_accelerators.gpu_execution_accelerator
    assert served.dynamic_batching == committed.dynamic_batching and served.max_batch_size == committed.max_batch_size
    from face2hbe.graphs import CPU_RUN_ROWS

    assert len(committed.model_warmup) == 3
    assert list(served.model_warmup) == [w for w in committed.model_warmup if w.batch_size <= CPU_RUN_ROWS]
    assert [w.batch_size for w in served.model_warmup] == [1, 8]
    assert served.parameters["run_rows"].string_value == str(CPU_RUN_ROWS)
    for key, value in committed.parameters.items():  # every committed parameter passes through, whatever it is
        assert served.parameters[key].string_value == value.string_value, key
    assert served.parameters["graph"].string_value == "mirror"
