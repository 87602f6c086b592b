"""The layer protocol: every layer type's answers agree with what its forward does, and the new
layers (batch norm, average pooling, addition) behave on every backend."""

from __future__ import annotations

import numpy as np
import pytest

from minievo import backend, graph
from minievo import layers as L
from minievo.autograd import Tensor
from minievo.models import build

# One instance of every layer type minievo ships, with an input it accepts (per sample).
SAMPLES = {
    "Linear": (lambda: L.Linear(12, 5), (12,)),
    "Conv2d": (lambda: L.Conv2d(3, 4, 3, stride=2, padding=1), (3, 9, 7)),
    "MaxPool2d": (lambda: L.MaxPool2d(2), (3, 9, 7)),
    "ReLU": (lambda: L.ReLU(), (3, 4, 4)),
    "Flatten": (lambda: L.Flatten(), (3, 4, 5)),
    "Dropout": (lambda: L.Dropout(0.3), (6,)),
    "BatchNorm2d": (lambda: L.BatchNorm2d(3), (3, 4, 5)),
    "AvgPool2d": (lambda: L.AvgPool2d(3, stride=2, padding=1), (3, 9, 7)),
    "GlobalAvgPool2d": (lambda: L.GlobalAvgPool2d(), (3, 4, 5)),
}
CONTAINERS = {"Module", "Sequential", "Add", "_Prunable"}


def test_every_shipped_layer_type_has_a_sample():
    shipped = {name for name, cls in L.LAYER_TYPES.items() if cls.__module__ == "minievo.layers"}
    assert shipped - CONTAINERS == set(SAMPLES)


@pytest.mark.parametrize("kind", list(SAMPLES))
def test_declared_output_shape_is_what_the_forward_gives(kind, backend_name, xp):
    make, shape = SAMPLES[kind]
    layer = make().to(backend_name).eval()
    x = Tensor(xp.asarray(np.random.default_rng(0).normal(size=(2, *shape)), dtype=xp.float32))
    out = layer(x)
    assert tuple(out.shape[1:]) == layer.output_shape(shape)
    live = np.ones(shape[0], dtype=bool)
    assert layer.live_outputs(live, shape).shape == (layer.output_shape(shape)[0],)
    need = np.ones(layer.output_shape(shape)[0], dtype=bool)
    assert layer.needed_inputs(need, shape).shape == (shape[0],)
    rebuilt = type(layer)(**layer.layer_config())
    assert rebuilt.output_shape(shape) == layer.output_shape(shape)


@pytest.mark.parametrize("kind", ["Conv2d", "Linear", "MaxPool2d", "AvgPool2d"])
def test_a_shape_that_does_not_fit_is_refused_naming_the_layer(kind):
    make, shape = SAMPLES[kind]
    bad = [(3, 4, 4), (11,)] if kind == "Linear" else [(5,)]
    if kind == "Conv2d":
        bad.append((5, 9, 7))  # another channel count
    for b in bad:
        with pytest.raises(ValueError, match=kind):
            make().output_shape(b)


def test_liveness_rules():
    flat = L.Flatten()
    np.testing.assert_array_equal(flat.live_outputs(np.array([True, False]), (2, 1, 2)),
                                  [True, True, False, False])
    np.testing.assert_array_equal(flat.needed_inputs(np.array([False, False, True, False]),
                                                     (2, 1, 2)), [False, True])
    conv = L.Conv2d(3, 2, 1)
    mask = np.zeros((2, 3, 1, 1), np.float32)
    mask[0, 1] = 1  # filter 0 reads input 1 only; filter 1 reads nothing
    conv.set_mask(mask)
    np.testing.assert_array_equal(conv.live_outputs(np.array([True, True, True]), (3, 4, 4)),
                                  [True, False])
    np.testing.assert_array_equal(conv.live_outputs(np.array([True, False, True]), (3, 4, 4)),
                                  [False, False])  # its one input is a constant
    np.testing.assert_array_equal(conv.needed_inputs(np.array([True, False]), (3, 4, 4)),
                                  [False, True, False])
    assert conv.macs((3, 4, 4)) == 16
    add = L.Add()
    np.testing.assert_array_equal(add.live_outputs([np.array([True, False, False]),
                                                    np.array([False, False, True])], None),
                                  [True, False, True])


def test_batch_norm_layer_modes_statistics_and_state(backend_name, xp):
    bn = L.BatchNorm2d(3, momentum=0.5).to(backend_name)
    rng = np.random.default_rng(1)
    x = xp.asarray(rng.normal(2.0, 3.0, size=(8, 3, 4, 4)), dtype=xp.float32)
    y = bn(Tensor(x)).data
    # training: each channel normalised by its batch statistics
    np.testing.assert_allclose(backend.to_numpy(y.mean(axis=(0, 2, 3))), 0, atol=1e-5)
    np.testing.assert_allclose(backend.to_numpy(y.std(axis=(0, 2, 3))), 1, atol=1e-3)
    xn = backend.to_numpy(x).astype(np.float64)
    mean = xn.mean(axis=(0, 2, 3))
    var = xn.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(backend.to_numpy(bn.running_mean), 0.5 * mean, rtol=1e-5)
    np.testing.assert_allclose(backend.to_numpy(bn.running_var), 0.5 + 0.5 * var, rtol=1e-5)
    # evaluation: the fixed affine map of scale_shift()
    bn.eval()
    scale, shift = bn.scale_shift()
    y = backend.to_numpy(bn(Tensor(x)).data)
    np.testing.assert_allclose(y, xn * scale[None, :, None, None] + shift[None, :, None, None],
                               rtol=1e-4, atol=1e-4)
    # the running statistics travel with the state dict and with .to()
    state = bn.state_dict()
    assert set(state) == {"weight", "bias", "running_mean", "running_var"}
    other = L.BatchNorm2d(3).to(backend_name)
    other.load_state_dict(state)
    np.testing.assert_array_equal(backend.to_numpy(other.running_var), state["running_var"])
    assert backend.backend_of(other.running_mean) == backend_name
    kept = bn.select_channels([2, 0])
    np.testing.assert_allclose(backend.to_numpy(kept.running_mean), state["running_mean"][[2, 0]])
    assert not kept.training


def test_batch_norm_refuses_bad_settings_and_negative_variances():
    for kwargs in (dict(num_features=0), dict(num_features=2, momentum=1.5),
                   dict(num_features=2, eps=0)):
        with pytest.raises(ValueError, match="BatchNorm2d"):
            L.BatchNorm2d(**kwargs)
    bn = L.BatchNorm2d(2)
    state = bn.state_dict()
    state["running_var"] = np.array([1.0, -1.0], np.float32)
    with pytest.raises(ValueError, match="negative"):
        bn.load_state_dict(state)


@pytest.mark.parametrize("name", ["resnet8", "resnet20"])
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_resnets_run_and_walk_on_both_input_shapes(name, shape, backend_name, xp):
    model = build(name, shape).to(backend_name)
    x = xp.zeros((2, *shape), dtype=xp.float32)
    assert model(Tensor(x)).shape == (2, 10)
    s = graph.walk(model, shape)
    assert s.output.out_shape == (10,) and not s.is_chain()
    blocks = (int(name[6:]) - 2) // 2
    assert sum(isinstance(n.layer, L.Add) for n in s.nodes) == blocks


def test_resnet_depth_must_be_6n_plus_2():
    from minievo.models import ResNet

    for depth in (7, 9, 21, True, 2):
        with pytest.raises(ValueError, match="6n"):
            ResNet(depth)
    with pytest.raises(ValueError, match="built for inputs"):
        build("lenet5", (3, 32, 32))
