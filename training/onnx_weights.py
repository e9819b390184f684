"""Warm start from a served model: weights of an exported face2hbe ONNX graph back into Keras.

The export folds each batch-norm into its convolution (kernel and bias), so
the ONNX graph holds the function but not the split between conv and BN. To
train on, the BN layers are re-parameterised from data: with the folded conv
`z = W*x` and bias `b`, setting moving mean/var to the measured statistics
(m, v) of `z`, gamma = sqrt(v + eps) and beta = m + b gives exactly `z + b` at
inference, and close to it in training mode (batch statistics ≈ m, v).
Then the next epochs start where the served model is, with BN still working.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from face2hbe.errors import DataError

log = logging.getLogger(__name__)


def _graph_weights(path: Path):
    """(conv kernels+biases, dense kernels+biases) in graph order, Keras layouts."""
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(path)).graph
    except Exception as error:  # protobuf raises several types for a damaged file
        raise DataError(f"{path}: not a readable ONNX model ({error})") from error
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    convs, denses = [], []
    for node in graph.node:
        if node.op_type == "Conv" and len(node.input) == 3:
            # ONNX OIHW -> Keras HWIO.
            convs.append((init[node.input[1]].transpose(2, 3, 1, 0), init[node.input[2]]))
        elif node.op_type == "Add" and node.input[0] in producers and producers[node.input[0]].op_type == "MatMul":
            matmul = producers[node.input[0]]
            denses.append((init[matmul.input[1]], init[node.input[1]]))
    return convs, denses


def load_onnx_weights(model, path: Path, sample_inputs: np.ndarray, batch: int = 64) -> None:
    """Load a face2hbe ONNX export into `model` (the batch-norm VGG16 of training/model.py).

    `sample_inputs`: VGG-preprocessed float images at the working size (a few
    hundred training crops) to measure the statistics the BN layers need.
    """
    import keras

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: ONNX model not found")
    convs, denses = _graph_weights(path)
    backbone = model.layers[1]
    conv_layers = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
    bn_layers = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    dense_layers = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    if len(bn_layers) != len(conv_layers):
        raise DataError(f"{path}: warm start from ONNX needs the batch-norm VGG16 (--weights none)")
    if len(convs) != len(conv_layers) or len(denses) != len(dense_layers):
        raise DataError(
            f"{path}: {len(convs)} convs and {len(denses)} dense layers, this network has "
            f"{len(conv_layers)} and {len(dense_layers)}"
        )
    for layer, (kernel, _) in zip(conv_layers, convs):
        if tuple(layer.kernel.shape) != kernel.shape:
            raise DataError(
                f"{path}: {layer.name} is {tuple(layer.kernel.shape)} here, {kernel.shape} in the ONNX graph"
            )
        layer.kernel.assign(kernel)
    for layer, (kernel, bias) in zip(dense_layers, denses):
        if tuple(layer.kernel.shape) != kernel.shape:
            raise DataError(
                f"{path}: {layer.name} has {tuple(layer.kernel.shape)} weights here, {kernel.shape} in "
                "the ONNX graph (same data kinds and --attributes as the exported run?)"
            )
        layer.set_weights([kernel, bias])

    # Pre-BN activations of the folded convs, all layers in one pass (BN as identity + bias first).
    for bn, (_, bias) in zip(bn_layers, convs):
        ones = np.ones_like(bias)
        bn.set_weights([ones, bias, np.zeros_like(bias), ones - bn.epsilon])
    probe = keras.Model(backbone.input, [layer.output for layer in conv_layers])
    sums = [np.zeros(b.shape, np.float64) for _, b in convs]
    squares = [np.zeros(b.shape, np.float64) for _, b in convs]
    count = [0] * len(convs)
    for start in range(0, len(sample_inputs), batch):
        outputs = probe(sample_inputs[start : start + batch], training=False)
        for i, z in enumerate(outputs):
            z = np.asarray(z, np.float64).reshape(-1, z.shape[-1])
            sums[i] += z.sum(0)
            squares[i] += (z * z).sum(0)
            count[i] += len(z)
    for i, (bn, (_, bias)) in enumerate(zip(bn_layers, convs)):
        mean = sums[i] / max(count[i], 1)
        var = np.maximum(squares[i] / max(count[i], 1) - mean * mean, 1e-6)
        bn.set_weights([np.sqrt(var + bn.epsilon), mean + bias, mean, var])
    log.info("warm start from %s (BN statistics from %d samples)", path, len(sample_inputs))
