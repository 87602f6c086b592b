"""Per-generation counts (docs/method.md#recorded): synapses, clusters, dead structure, MACs."""

from __future__ import annotations

import numpy as np
import pytest

from minievo.backend import to_numpy
from minievo.evolution.metrics import model_metrics
from minievo.layers import (
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    Module,
    ReLU,
    Sequential,
    prunable_layers,
)
from minievo.models import lenet5


def _set(layer, xp, edit):
    """Apply ``edit`` to a NumPy copy of the layer's mask and install it."""
    mask = to_numpy(layer.mask).copy()
    edit(mask)
    layer.set_mask(xp.asarray(mask))


def test_dense_lenet5_counts(backend_name):
    m = model_metrics(lenet5(), input_shape=(1, 28, 28))
    assert m.dense.synapses == m.live.synapses == m.effective.synapses == 430_500
    # kernel/neuron: 20 + 1000 + 500 + 10, filter/neuron: 20 + 50 + 500 + 10
    assert m.live.clusters("kernel") == 20 + 1000 + 500 + 10
    assert m.live.clusters("filter") == 20 + 50 + 500 + 10
    assert (m.live.kernels, m.live.filters, m.live.neurons) == (1020, 70, 510)
    # conv1 20*1*25*24*24, conv2 50*20*25*8*8, fc1 800*500, fc2 500*10
    assert [layer.dense.macs for layer in m.layers] == [288_000, 1_600_000, 400_000, 5_000]
    assert m.dense.macs == m.live.macs == m.effective.macs == 2_293_000
    assert [layer.output_shape for layer in m.layers] == [(20, 24, 24), (50, 8, 8), (500,), (10,)]
    assert [layer.name for layer in m.layers] == [name for name, _ in prunable_layers(lenet5())]
    assert m.synaptic_efficiency() == 1.0
    assert m.cluster_efficiency("kernel") == m.cluster_efficiency("filter") == 1.0


def test_dead_filters_propagate_forward(xp):
    model = lenet5()
    conv1, conv2, fc1, fc2 = (layer for _, layer in prunable_layers(model))

    def edit_conv1(m):
        m[3] = 0  # conv1 filter 3 is dead: a constant map

    def edit_conv2(m):
        m[7] = 0
        m[7, 3] = 1  # conv2 filter 7 reads only from the dead map 3 -> effectively dead
        m[9, :, 0, 0] = 0  # 20 synapses gone, no kernel emptied

    def edit_fc1(m):
        m[10] = 0  # fc1 neuron 10 dead: its 10 outgoing synapses in fc2 do nothing

    _set(conv1, xp, edit_conv1)
    _set(conv2, xp, edit_conv2)
    _set(fc1, xp, edit_fc1)
    m = model_metrics(model, (1, 28, 28))
    c1, c2, f1, f2 = m.layers

    assert (c1.live.synapses, c1.live.kernels, c1.live.filters) == (475, 19, 19)
    assert c1.effective == c1.live  # the input image is never dead

    # conv2: filter 7 keeps only kernel (7, 3); 20 synapses removed from filter 9
    live2 = 25_000 - 25 * 20 + 25 - 20
    assert (c2.live.synapses, c2.live.kernels, c2.live.filters) == (live2, 1000 - 19, 50)
    # effective: the 50 live kernels (o, 3) read the dead map 3 and go
    assert c2.effective.synapses == live2 - 50 * 25 + 1  # (9, 3) had lost 1 of its 25
    assert c2.effective.kernels == 1000 - 19 - 50
    assert c2.effective.filters == 49  # filter 7 lost its only input
    assert c2.effective.macs == c2.effective.synapses * 64

    # fc1: the 16 flattened inputs 7*16 ... 7*16+15 of the dead map 7 are constant
    assert (f1.live.synapses, f1.live.neurons) == (400_000 - 800, 499)
    assert f1.effective.synapses == 400_000 - 800 - 499 * 16
    assert f1.effective.neurons == 499
    # fc2: neuron 10 of fc1 is dead, so its 10 outgoing synapses do nothing
    assert f2.live.synapses == 5_000 and f2.effective.synapses == 5_000 - 10

    assert m.live.synapses == 475 + live2 + 399_200 + 5_000
    assert m.effective.synapses == sum(layer.effective.synapses for layer in m.layers)
    assert m.live.clusters("kernel") == 19 + 981 + 499 + 10
    assert m.effective.clusters("filter") == 19 + 49 + 499 + 10
    assert m.live.macs == 475 * 576 + live2 * 64 + 399_200 + 5_000
    assert m.dense.macs == 2_293_000

    dense = model_metrics(lenet5())
    assert m.synaptic_efficiency(dense) == pytest.approx(430_500 / m.live.synapses)
    assert m.synaptic_efficiency(dense, effective=True) == pytest.approx(
        430_500 / m.effective.synapses)
    assert m.cluster_efficiency("kernel", dense) == pytest.approx(1530 / 1509)
    row = m.as_row(dense)
    assert row["synapses"] == m.live.synapses and row["clusters_filter"] == 19 + 50 + 499 + 10
    assert row["density_2"] == pytest.approx(live2 / 25_000)


def test_shapes_with_stride_padding_dropout(xp):
    model = Sequential(
        Conv2d(3, 4, 3, stride=2, padding=1), ReLU(), MaxPool2d(2), Dropout(0.5),
        Sequential(Flatten(), Linear(16, 5)),
    )
    m = model_metrics(model, input_shape=(3, 9, 9))
    conv, lin = m.layers
    assert conv.output_shape == (4, 5, 5) and lin.input_shape == (16,)
    assert conv.dense.macs == 4 * 3 * 9 * 25 and lin.dense.macs == 80
    assert lin.name == "4.1"
    # a dead conv filter removes its 2*2 block of flattened inputs
    _set(model.layers[0], xp, lambda mask: mask.__setitem__(2, 0))
    m = model_metrics(model, input_shape=(3, 9, 9))
    assert m.layers[1].effective.synapses == 80 - 5 * 4


def test_all_dead_model_has_infinite_efficiency(xp):
    model = lenet5()
    for _, layer in prunable_layers(model):
        layer.set_mask(xp.zeros(layer.weight.shape, dtype=xp.float32))
    m = model_metrics(model)
    assert m.live.synapses == 0 and m.effective.macs == 0
    assert m.synaptic_efficiency() == float("inf")


def test_metrics_errors():
    with pytest.raises(ValueError, match="missing Flatten"):
        model_metrics(Sequential(Conv2d(1, 2, 3), Linear(8, 2)), (1, 4, 4))
    with pytest.raises(ValueError, match="expects"):
        model_metrics(lenet5(), (3, 28, 28))

    class Odd(Module):  # changes the shape without saying so in output_shape()
        def forward(self, x):
            return x.reshape(x.shape[0], 2, 2)

    with pytest.raises(ValueError, match="Odd.*output_shape"):
        model_metrics(Sequential(Odd(), Flatten(), Linear(4, 2)), (4,))

    class Doubled(Module):  # an operation outside a layer is refused, naming it
        def __init__(self):
            super().__init__()
            self.a, self.b = Linear(4, 4), Linear(4, 2)

        def forward(self, x):
            return self.b(self.a(x) * 2.0)

    with pytest.raises(TypeError, match="Mul outside a layer"):
        model_metrics(Doubled(), (4,))
    with pytest.raises(ValueError, match="kernel, filter"):
        model_metrics(lenet5()).live.clusters("neuron")
    np.testing.assert_equal(model_metrics(Sequential(Linear(4, 2)), (4,)).dense.synapses, 8)
