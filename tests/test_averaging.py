"""Checkpoint averaging and batch-norm re-estimation (training/averaging.py)."""

from __future__ import annotations

import numpy as np
import pytest

from face2hbe.training.averaging import average_weights, recalibrate_batchnorm


def test_average_weights_is_the_elementwise_mean_and_refuses_other_networks():
    a = [np.zeros((2, 3)), np.ones(3)]
    b = [np.full((2, 3), 4.0), np.full(3, 3.0)]
    mean = average_weights([a, b])
    assert np.allclose(mean[0], 2.0) and np.allclose(mean[1], 2.0)
    with pytest.raises(ValueError, match="different networks"):
        average_weights([a, [np.zeros((3, 2)), np.ones(3)]])
    with pytest.raises(ValueError):
        average_weights([])


def test_recalibrated_batchnorm_holds_the_data_statistics():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 3, padding="same")
    bn = keras.layers.BatchNormalization(momentum=0.99)
    model = keras.Model(inputs, bn(conv(inputs)))
    x = np.random.default_rng(0).normal(3.0, 2.0, (256, 8, 8, 3)).astype(np.float32)
    assert np.allclose(bn.moving_mean.numpy(), 0.0)  # fresh layer: nothing measured yet

    assert recalibrate_batchnorm(model, x, batch=64) == 1
    z = np.asarray(conv(x)).reshape(4, 64, -1, 4)  # 4 batches of 64 images
    batch_means = z.mean(axis=(1, 2))
    assert np.allclose(bn.moving_mean.numpy(), batch_means.mean(0), atol=1e-4)
    assert np.allclose(bn.moving_variance.numpy(), z.var(axis=(1, 2)).mean(0), rtol=1e-3)
    assert bn.momentum == 0.99  # training afterwards keeps its own momentum
