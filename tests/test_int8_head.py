"""INT8 quantization keeps the head's last layer in float (issue #27): scores are not rounded to 256 levels.

A tiny graph of the served form (uint8 crops in, in-graph cast, Conv, pooling, a dense head, Sigmoid out) is
quantized both ways with export/quantize.py's own recipe; docs/serving.md "INT8 ties" has the served model's figures.
"""

from __future__ import annotations

import numpy as np
import pytest

from face2hbe import contract


def _tiny_graph(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {
        "scale": np.array(1 / 255),
        "conv_w": rng.normal(0, 0.5, (16, 3, 3, 3)),
        "conv_b": np.zeros(16),
        "dense_w": rng.normal(0, 0.3, (16, 32)),
        "dense_b": np.zeros(32),
        "head_w": rng.normal(0, 0.3, (32, 6)),
        "head_b": np.zeros(6),
    }
    nodes = [
        helper.make_node("Cast", [contract.INPUT_NAME], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "scale"], ["scaled"]),
        helper.make_node("Transpose", ["scaled"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("MatMul", ["flat", "dense_w"], ["dense"]),
        helper.make_node("Add", ["dense", "dense_b"], ["dense_bias"]),
        helper.make_node("Relu", ["dense_bias"], ["hidden"]),
        helper.make_node("MatMul", ["hidden", "head_w"], ["head"], name="head_matmul"),
        helper.make_node("Add", ["head", "head_b"], ["logits"], name="head_bias"),
        helper.make_node("Sigmoid", ["logits"], [contract.OUTPUT_NAME]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(contract.INPUT_NAME, TensorProto.UINT8, [None, 16, 16, 3])],
        [helper.make_tensor_value_info(contract.OUTPUT_NAME, TensorProto.FLOAT, [None, 6])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_the_head_stays_in_float_and_its_scores_keep_their_values(tmp_path):
    import onnx
    import onnxruntime as ort

    from face2hbe.export.quantize import head_nodes, quantize_int8

    fp32 = _tiny_graph(tmp_path / "fp32.onnx")
    assert head_nodes(onnx.load(str(fp32))) == ["head_bias", "head_matmul"]
    rng = np.random.default_rng(1)  # crops that differ in colour and gradient, so pooled features differ
    ramp = np.linspace(-1, 1, 16)[None, :, None, None] * rng.uniform(-60, 60, (256, 1, 1, 3))
    crops = np.clip(rng.uniform(40, 215, (256, 1, 1, 3)) + ramp + rng.normal(0, 8, (256, 16, 16, 3)), 0, 255).astype(
        np.uint8
    )
    out = {}
    for float_head in (False, True):
        path = quantize_int8(fp32, tmp_path / f"int8-{float_head}.onnx", crops[:64], float_head=float_head)
        graph = onnx.load(str(path)).graph
        logits = next(n for n in graph.node if n.op_type == "Sigmoid").input[0]
        quantized = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
        # The logits are quantized (rounded to 256 levels) exactly when the head is not kept in float.
        assert any(t.startswith(logits.removesuffix("_DequantizeLinear_Output")) for t in quantized) != float_head
        assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}  # the rest is still INT8
        out[float_head] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {contract.INPUT_NAME: crops}
        )[0]
    reference = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(
        None, {contract.INPUT_NAME: crops}
    )[0]
    distinct = {k: min(len(np.unique(v[:, j])) for j in range(v.shape[1])) / len(v) for k, v in out.items()}
    assert distinct[True] > 0.9 and distinct[False] < 0.6, distinct
    assert np.abs(out[True] - reference).mean() <= np.abs(out[False] - reference).mean() + 1e-3


def test_a_graph_without_a_sigmoid_head_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from face2hbe.errors import ModelRepositoryError
    from face2hbe.export.quantize import quantize_int8

    graph = helper.make_graph(
        [helper.make_node("Cast", [contract.INPUT_NAME], [contract.OUTPUT_NAME], to=TensorProto.FLOAT)],
        "plain",
        [helper.make_tensor_value_info(contract.INPUT_NAME, TensorProto.UINT8, [None, 4])],
        [helper.make_tensor_value_info(contract.OUTPUT_NAME, TensorProto.FLOAT, [None, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "plain.onnx"))
    with pytest.raises(ModelRepositoryError, match="no MatMul/Gemm feeding a Sigmoid"):
        quantize_int8(tmp_path / "plain.onnx", tmp_path / "int8.onnx", np.zeros((4, 4), np.uint8))
