"""The network: one VGG16 backbone shared by a multi-label sigmoid head.

The Keras model takes VGG-preprocessed float images (see `preprocess`); the
exported ONNX graph puts `preprocess` in front so servers take raw uint8.
"""

from __future__ import annotations

import os
from pathlib import Path

from face2hbe.contract import VGG_BGR_MEAN

VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
HEAD_UNITS = 256


def preprocess(images_uint8, working_size: int):
    """Raw RGB uint8 [N,H,W,3] -> what the Keras model takes: resized, BGR, mean-subtracted.

    Written with TensorFlow ops so tf2onnx can put the same computation into
    the exported graph.
    """
    return to_vgg_input(resize(images_uint8, working_size))


def resize(images, working_size: int | None):
    """Cast to float32 and resize bilinearly to the network's working size."""
    import tensorflow as tf

    x = tf.cast(images, tf.float32)
    if working_size is not None and x.shape[1] != working_size:
        x = tf.image.resize(x, (working_size, working_size), method="bilinear", antialias=False)
    return x


def to_vgg_input(x):
    """Float RGB in [0, 255] -> BGR minus the ImageNet mean (keras.applications.vgg16 "caffe" mode)."""
    import tensorflow as tf

    x = tf.reverse(x, axis=[-1])
    return x - tf.constant(VGG_BGR_MEAN, dtype=tf.float32)


def mirror_averaged(model, x):
    """Scores averaged over each image and its left-right mirror (test-time augmentation).

    One network call on the doubled batch, so the exported graph holds the
    weights once; the cost is twice the backbone compute per face.
    """
    import tensorflow as tf

    n = tf.shape(x)[0]
    scores = model(tf.concat([x, tf.reverse(x, axis=[2])], axis=0), training=False)
    return (scores[:n] + scores[n:]) / 2


def resolve_weights(weights: str) -> str | None:
    """`imagenet` (Keras downloads it), `none`, or a local .h5 file."""
    if weights is None or str(weights).lower() == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights)
    if not path.is_file():
        from face2hbe.errors import DataError

        raise DataError(f"{weights}: weights file not found (use imagenet, none or a local VGG16 .h5)")
    return os.fspath(path)


def build_backbone(weights: str | None, batchnorm: bool):
    """VGG16 convolutional base, channels last, any input size.

    With `batchnorm` a BN layer follows every conv (trains from scratch far
    faster; folds into the convs at export so serving cost is unchanged).
    """
    import keras
    from keras import layers

    if not batchnorm:
        return keras.applications.VGG16(include_top=False, weights=weights, input_shape=(None, None, 3))
    if weights is not None:
        raise ValueError("the batch-norm VGG16 variant has no pretrained weights: use --weights none")
    inputs = keras.Input((None, None, 3), name="vgg_input")
    x = inputs
    for b, widths in enumerate(VGG16_BLOCKS, start=1):
        for c, width in enumerate(widths, start=1):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{b}_conv{c}")(x)
            x = layers.BatchNormalization(name=f"block{b}_bn{c}")(x)
            x = layers.Activation("relu", name=f"block{b}_relu{c}")(x)
        x = layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
    return keras.Model(inputs, x, name="vgg16_bn")


def build_model(num_outputs: int, weights: str | None = "imagenet", batchnorm: bool = False, dropout: float = 0.3):
    """VGG16 base + global average pooling + dense head + `num_outputs` sigmoids."""
    import keras
    from keras import layers

    backbone = build_backbone(weights, batchnorm)
    inputs = keras.Input((None, None, 3), name="preprocessed")
    x = backbone(inputs)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dense(HEAD_UNITS, activation="relu", name="head_dense")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    # float32 sigmoids under a mixed-precision policy too: the loss takes logs of them
    outputs = layers.Dense(num_outputs, activation="sigmoid", name="scores", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="face2hbe")


def set_backbone_trainable(model, trainable_from: str | None) -> None:
    """Freeze the backbone up to (not including) the first layer whose name starts with `trainable_from`.

    `None` freezes the whole backbone; `""` makes all of it trainable.
    """
    backbone = model.layers[1]
    if trainable_from is None:
        backbone.trainable = False
        return
    backbone.trainable = True
    unfrozen = trainable_from == ""
    for layer in backbone.layers:
        unfrozen = unfrozen or layer.name.startswith(trainable_from)
        layer.trainable = unfrozen


def masked_binary_crossentropy(y_true, y_pred, weights=None):
    """BCE averaged over known labels only: a label < 0 (unknown) adds nothing.

    Soft labels in [0, 1] are allowed (distillation from pseudo-labels);
    `weights` (same shape or broadcastable) scales each term.
    """
    from keras import ops

    known = ops.cast(y_true >= 0.0, y_pred.dtype)
    if weights is not None:
        known = known * weights
    target = ops.clip(y_true, 0.0, 1.0)
    eps = 1e-7
    p = ops.clip(y_pred, eps, 1.0 - eps)
    bce = -(target * ops.log(p) + (1.0 - target) * ops.log(1.0 - p))
    count = ops.sum(ops.cast(y_true >= 0.0, y_pred.dtype), axis=-1)
    return ops.sum(bce * known, axis=-1) / ops.maximum(count, 1.0)
