"""Reference architectures: sizes (pinned synapse counts), output shapes, a training step."""

from __future__ import annotations

import numpy as np
import pytest

import minievo.functions as F
from minievo import init, models
from minievo.autograd import Tensor
from minievo.layers import Conv2d, Linear, prunable_layers
from minievo.optim import SGD


def synapses(model) -> int:
    """Weights of the prunable layers (biases are not synapses)."""
    return sum(layer.weight.size for _, layer in prunable_layers(model))


def test_lenet5_has_430500_synapses():
    # Caffe LeNet-5: 20*1*5*5 + 50*20*5*5 + 800*500 + 500*10 = 500 + 25000 + 400000 + 5000
    model = models.lenet5()
    assert synapses(model) == 430_500
    layers = [layer for _, layer in prunable_layers(model)]
    assert [type(m) for m in layers] == [Conv2d, Conv2d, Linear, Linear]
    assert [m.weight.shape for m in layers] == [(20, 1, 5, 5), (50, 20, 5, 5), (500, 800),
                                                (10, 500)]


def test_lenet300_100_has_266200_synapses():
    # 784*300 + 300*100 + 100*10
    assert synapses(models.lenet300_100()) == 266_200


@pytest.mark.parametrize("name", list(models.MODELS))
def test_model_output_shapes(name, xp):
    model = models.build(name)
    shape = models.INPUT_SHAPES[name]
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((2, *shape)),
                          dtype=xp.float32))
    y = model(x)
    assert y.shape == (2, 10) and y.dtype == np.float32


def test_unknown_model_lists_valid_ones():
    with pytest.raises(ValueError, match="choose one of: lenet5, lenet300_100, cifar_net"):
        models.build("resnet")


def test_lenet5_training_steps_reduce_the_loss(xp):
    rng = np.random.default_rng(0)
    init.manual_seed(0)
    model = models.lenet5()
    x = Tensor(xp.asarray(rng.standard_normal((16, 1, 28, 28)), dtype=xp.float32))
    y = xp.asarray(rng.integers(0, 10, size=16))
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = F.softmax_cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.data))
    assert losses[-1] < losses[0]
    assert all(np.isfinite(losses))
    for p in model.parameters():
        assert p.dtype == np.float32 and p.grad.dtype == np.float32
