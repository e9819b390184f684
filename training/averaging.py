"""Checkpoint averaging: one network from the mean of several of its weight sets.

Points along the end of a training run sit on the sides of the same basin;
their mean sits nearer its floor and usually scores better than any of them
(Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima"). Batch-norm
moving statistics do not average like weights, so they are measured again on
training images afterwards.
"""

from __future__ import annotations

import numpy as np


def average_weights(weight_sets: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Element-wise mean of `model.get_weights()` lists of one architecture."""
    if not weight_sets:
        raise ValueError("nothing to average")
    shapes = [tuple(w.shape for w in ws) for ws in weight_sets]
    if any(s != shapes[0] for s in shapes):
        raise ValueError("weight sets of different networks cannot be averaged")
    return [np.mean([ws[i] for ws in weight_sets], axis=0) for i in range(len(weight_sets[0]))]


def recalibrate_batchnorm(model, inputs: np.ndarray, batch: int = 128) -> int:
    """Set every BN layer's moving mean/variance to the average batch statistics over `inputs`.

    Runs the network in training mode (each BN normalises with its batch's
    statistics, as in training) with the momentum of batch k set to k/(k+1),
    which makes the moving value the plain mean over the batches.
    Returns the number of BN layers updated.
    """
    import keras

    layers = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [layer.momentum for layer in layers]
    try:
        for k, start in enumerate(range(0, len(inputs), batch)):
            for layer in layers:
                layer.momentum = k / (k + 1)
            model(inputs[start : start + batch], training=True)
    finally:
        for layer, momentum in zip(layers, saved):
            layer.momentum = momentum
    return len(layers)


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)
