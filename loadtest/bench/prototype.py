"""The original prototype's compute, for the benchmark: six one-vs-rest CNNs per face.

Three VGG16 at 150x150 and three ResNet50 at 224x224 (one per label each),
Keras applications with random weights (only compute is compared) and a tiny
sigmoid head, exported to ONNX once with tf2onnx and cached outside the repo.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from face2hbe.contract import LABELS

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "pixels"


@dataclass(frozen=True)
class PrototypeNet:
    arch: str  # "vgg16" or "resnet50"
    size: int  # input side in pixels
    label: str

    @property
    def filename(self) -> str:
        return f"proto-{self.arch}-{self.size}-{self.label}.onnx"


NETS = [PrototypeNet("vgg16", 150, label) for label in LABELS] + [
    PrototypeNet("resnet50", 224, label) for label in LABELS
]


def _keras_model(net: PrototypeNet, seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    backbone = {"vgg16": keras.applications.VGG16, "resnet50": keras.applications.ResNet50}[net.arch]
    base = backbone(weights=None, include_top=False, input_shape=(net.size, net.size, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(base.output)
    score = keras.layers.Dense(1, activation="sigmoid")(pooled)
    return keras.Model(base.input, score, name=f"{net.arch}_{net.label}")


def export_net(net: PrototypeNet, path: Path, seed: int) -> Path:
    """Build one prototype CNN and write it as ONNX (float32 NHWC input, explicit signature)."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    model = _keras_model(net, seed)
    signature = (tf.TensorSpec((None, net.size, net.size, 3), tf.float32, name=INPUT_NAME),)

    @tf.function(input_signature=signature)
    def serve(pixels):
        return model(pixels, training=False)

    onnx_model, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=OPSET)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    onnx.save(onnx_model, tmp)
    tmp.replace(path)  # a killed export never leaves a half-written model in the cache
    return path


def prototype_models(cache_dir: Path) -> list[tuple[PrototypeNet, Path]]:
    """The six ONNX files, exported on first use (needs TensorFlow + tf2onnx), cached after."""
    cache_dir = Path(cache_dir)
    found = []
    for seed, net in enumerate(NETS):
        path = cache_dir / net.filename
        if not path.is_file():
            log.info("exporting prototype %s for %s to %s (first run only)", net.arch, net.label, path)
            export_net(net, path, seed)
        found.append((net, path))
    return found
