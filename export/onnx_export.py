"""Keras -> ONNX with the VGG preprocessing inside the graph.

The exported graph takes the contract's raw input (uint8 RGB [-1,150,150,3]),
resizes to the network's working size, converts to BGR, subtracts the ImageNet
mean, runs the network (optionally on each face and its mirror, averaged) and
returns two outputs: the contract's labels' sigmoid scores (`scores`) and the
served attribute labels' (`attributes`, columns of the same 43-wide head).
"""

from __future__ import annotations

from pathlib import Path

from face2hbe.contract import (
    ATTRIBUTE_COLUMNS,
    ATTRIBUTES_NAME,
    HEAD_WIDTH,
    INPUT_NAME,
    INPUT_SHAPE,
    LABELS,
    OUTPUT_NAME,
)
from face2hbe.repository import MIRROR_AVERAGE_KEY, WORKING_SIZE_KEY

OPSET = 17


def export_onnx(
    model, working_size: int, output_path: str | Path, opset: int = OPSET, mirror_average: bool = False
) -> Path:
    """Write `model` (a Keras model on preprocessed floats) as ONNX on raw uint8.

    `mirror_average`: the graph scores each face and its mirror and returns the mean
    (the training run chose its thresholds on such scores).
    """
    import tensorflow as tf
    import tf2onnx

    from face2hbe.training.model import mirror_averaged, preprocess

    # Keras 3 models need an explicit signature for tf2onnx.
    signature = (tf.TensorSpec((None, *INPUT_SHAPE), tf.uint8, name=INPUT_NAME),)

    @tf.function(input_signature=signature)
    def serve(image):
        x = preprocess(image, working_size)
        scores = mirror_averaged(model, x) if mirror_average else model(x, training=False)
        served = tf.identity(scores[:, : len(LABELS)], name=OUTPUT_NAME)
        if not with_attributes:
            return served
        return served, tf.identity(tf.gather(scores, list(ATTRIBUTE_COLUMNS), axis=1), name=ATTRIBUTES_NAME)

    # The attributes output reads columns of the 43-wide head (training with attributes); narrower
    # heads (label-only training runs) export `scores` alone.
    with_attributes = model.output_shape[-1] == HEAD_WIDTH
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    onnx_model, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=opset)
    _rename_output(onnx_model, 0, OUTPUT_NAME)
    if with_attributes:
        _rename_output(onnx_model, 1, ATTRIBUTES_NAME)
    _set_batch_dim(onnx_model)
    import onnx

    onnx.helper.set_model_props(
        onnx_model, {WORKING_SIZE_KEY: str(int(working_size)), MIRROR_AVERAGE_KEY: str(bool(mirror_average)).lower()}
    )

    onnx.checker.check_model(onnx_model)
    onnx.save(onnx_model, output_path)
    return output_path


def _rename_output(onnx_model, index: int, name: str) -> None:
    """tf2onnx names outputs after TF tensors (Identity:0); give the contract's name."""
    old = onnx_model.graph.output[index].name
    if old == name:
        return
    for node in onnx_model.graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
        node.input[:] = [name if i == old else i for i in node.input]
    onnx_model.graph.output[index].name = name


def _set_batch_dim(onnx_model) -> None:
    """Name the dynamic batch dimension 'batch' on input and output (readable in Netron and tests)."""
    for value in [*onnx_model.graph.input, *onnx_model.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        dim.dim_param = "batch"
