"""The compiled CPU kernel (minievo/kernels/sparse_cpu.c): results, argument checks, fallback.

The layer- and model-level comparisons with the masked dense forward run the native path too
(tests/test_sparse_forward.py, ``method="native"``); here the kernel is called directly.
"""

from __future__ import annotations

import numpy as np
import pytest

from minievo import models, sparse
from minievo.autograd import Tensor, no_grad
from minievo.kernels import native
from minievo.sparse import cpu
from minievo.sparse import reference as ref
from minievo.sparse.synthetic import random_mask, set_random_masks

pytestmark = pytest.mark.skipif(native.compiler() is None, reason="no C compiler")


@pytest.fixture(autouse=True)
def _dense_reference(dense_layers):
    """The masked dense models these tests compare against run their dense path."""



@pytest.fixture
def kernel():
    return native.load()


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """A clean slate for tests that change how the kernel is found or built."""
    monkeypatch.setenv("MINIEVO_NATIVE_CACHE", str(tmp_path))
    native.reset()
    yield tmp_path
    native.reset()


def synapse_lists(weight, mask, h, w):
    """(syn_ptr, off, w) of a masked (O, C, kh, kw) weight on padded h x w inputs."""
    o, c, ky, kx = np.nonzero(mask)
    syn_ptr = np.concatenate([[0], np.cumsum(np.bincount(o, minlength=weight.shape[0]))])
    off = (c * h + ky) * w + kx
    return (syn_ptr.astype(np.int32), off.astype(np.int32),
            weight[o, c, ky, kx].astype(np.float32))


def reference(x_bl, weight, mask, bias, stride, bias_map, pool, relu):
    """float64 result from the loop-free reference, batch-last in and out."""
    y = ref.masked_conv2d(x_bl.transpose(3, 0, 1, 2), weight, bias, mask, stride)
    if bias_map is not None:
        y = y + bias_map[None]
    if pool is not None:
        y = ref.max_pool2d(y, *pool)
    if relu:
        y = ref.relu(y)
    return y.transpose(1, 2, 3, 0)


CASES = [  # (C, O, k, H, stride, pool)
    (3, 5, 3, 9, 1, None),
    (4, 6, 5, 12, 1, (2, 2)),
    (2, 3, 3, 11, 2, None),
    (5, 4, 2, 10, 1, (3, 2)),
]


@pytest.mark.parametrize("n", [1, 63, 64, 65, 130])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "C{}O{}k{}H{}s{}p{}".format(*c))
@pytest.mark.parametrize("relu", [False, True])
def test_kernel_matches_reference(kernel, n, case, relu):
    c, o, k, h, stride, pool = case
    rng = np.random.default_rng(n + 7 * c)
    weight = rng.standard_normal((o, c, k, k)).astype(np.float32)
    mask = random_mask(rng, weight.shape, 0.4, kernel_level=False)
    mask[1] = 0  # a map with no synapse: bias only
    x = rng.standard_normal((c, h, h, n)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    oh, ow = ref.conv_output_hw(h, h, k, k, stride, 0)
    bias_map = rng.standard_normal((o, oh, ow)).astype(np.float32) if n % 2 else None
    want = reference(x, weight, mask, bias, stride, bias_map, pool, relu)
    out = np.full(want.shape, np.nan, dtype=np.float32)
    kernel.conv(x, *synapse_lists(weight, mask, h, h), (oh, ow), stride, bias, bias_map, pool,
                relu, out)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def full_layer(seed: int, o: int, c: int, h: int, n: int):
    """(weight, all-ones mask, batch-last x, bias) of a 3x3 layer with c -> o maps."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((o, c, 3, 3)).astype(np.float32)
    x = rng.standard_normal((c, h, h, n)).astype(np.float32)
    return weight, np.ones_like(weight), x, rng.standard_normal(o).astype(np.float32)


def test_batch_slices_write_only_their_images(kernel):
    weight, mask, x, bias = full_layer(1, 3, 2, 6, 100)
    lists = synapse_lists(weight, mask, 6, 6)
    whole = np.empty((3, 4, 4, 100), np.float32)
    kernel.conv(x, *lists, (4, 4), 1, bias, None, None, False, whole)
    parts = np.full_like(whole, -7.0)
    for a, b in [(0, 64), (64, 70), (70, 100)]:
        kernel.conv(x, *lists, (4, 4), 1, bias, None, None, False, parts, a, b)
    np.testing.assert_array_equal(parts, whole)  # same order of sums: bit for bit
    untouched = np.full_like(whole, -7.0)
    kernel.conv(x, *lists, (4, 4), 1, bias, None, None, False, untouched, 10, 20)
    assert np.all(untouched[..., :10] == -7.0) and np.all(untouched[..., 20:] == -7.0)


@pytest.mark.parametrize("layout", ["batch-last", "batch-first", "channels-last", "strided"])
def test_any_input_and_output_layout(kernel, layout):
    """Inputs of any strides are read in place; outputs may be batch-first or channels-last
    views as well as batch-last arrays."""
    rng = np.random.default_rng(6)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    mask = random_mask(rng, weight.shape, 0.5, kernel_level=False)
    bias = rng.standard_normal(4).astype(np.float32)
    nchw = rng.standard_normal((70, 3, 8, 8)).astype(np.float32)
    x = {"batch-last": np.ascontiguousarray(nchw.transpose(1, 2, 3, 0)),
         "batch-first": nchw.transpose(1, 2, 3, 0),
         "channels-last": np.ascontiguousarray(nchw.transpose(0, 2, 3, 1)).transpose(3, 1, 2,
                                                                                     0),
         "strided": np.pad(nchw, ((0, 0), (0, 0), (0, 1), (0, 0)))[:, :, :8].transpose(
             1, 2, 3, 0)}[layout]
    want = reference(x, weight, mask, bias, 1, None, (2, 2), True)
    lists = synapse_lists(weight, mask, 8, 8)
    out_first = np.empty((70, 4, 3, 3), np.float32)
    out_nhwc = np.empty((70, 3, 3, 4), np.float32)
    for out in (np.empty(want.shape, np.float32), out_first.transpose(1, 2, 3, 0),
                out_nhwc.transpose(3, 1, 2, 0)):
        kernel.conv(x, *lists, (6, 6), 1, bias, None, (2, 2), True, out)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_out_map_writes_maps_into_a_larger_output(kernel):
    weight, mask, x, bias = full_layer(8, 3, 2, 5, 9)
    want = reference(x, weight, mask, bias, 1, None, None, False)
    out = np.full((6, 3, 3, 9), -5.0, np.float32)
    out_map = np.array([4, 0, 2], np.int32)
    kernel.conv(x, *synapse_lists(weight, mask, 5, 5), (3, 3), 1, bias, None, None, False, out,
                out_map=out_map)
    np.testing.assert_allclose(out[out_map], want, rtol=1e-5, atol=1e-5)
    assert np.all(out[[1, 3, 5]] == -5.0)
    for bad in ([4, 0, 6], [4, 4, 2], [-1, 0, 2]):
        with pytest.raises(ValueError, match="out_map must hold distinct maps"):
            kernel.conv(x, *synapse_lists(weight, mask, 5, 5), (3, 3), 1, bias, None, None,
                        False, out, out_map=np.array(bad, np.int32))


def test_nan_propagates_like_numpy(kernel):
    x = np.zeros((1, 4, 4, 3), np.float32)
    x[0, 1, 1, 0] = np.nan
    weight = np.ones((1, 1, 1, 1), np.float32)
    lists = synapse_lists(weight, np.ones_like(weight), 4, 4)
    out = np.empty((1, 2, 2, 3), np.float32)
    kernel.conv(x, *lists, (4, 4), 1, np.zeros(1, np.float32), None, (2, 2), True, out)
    assert np.isnan(out[0, 0, 0, 0]) and not np.isnan(out[..., 1:]).any()
    assert np.isnan(out).sum() == 1


def test_bad_arguments_are_refused(kernel):
    x = np.zeros((2, 5, 5, 4), np.float32)
    weight = np.ones((3, 2, 3, 3), np.float32)
    syn_ptr, off, w = synapse_lists(weight, np.ones_like(weight), 5, 5)
    bias = np.zeros(3, np.float32)
    out = np.empty((3, 3, 3, 4), np.float32)

    def call(**kw):
        args = dict(x=x, syn_ptr=syn_ptr, off=off, w=w, out_hw=(3, 3), stride=1, bias=bias,
                    bias_map=None, pool=None, relu=False, out=out)
        args.update(kw)
        kernel.conv(**args)

    call()
    with pytest.raises(TypeError, match="x must be float32, got float64"):
        call(x=x.astype(np.float64))
    with pytest.raises(TypeError, match="off must be int32"):
        call(off=off.astype(np.int64))
    with pytest.raises(ValueError, match="out must be a writeable array"):
        call(out=np.broadcast_to(out[:1], out.shape))
    with pytest.raises(ValueError, match="pad must be >= 0"):
        call(pad=-1)
    with pytest.raises(ValueError, match="w must be C-contiguous"):
        call(w=np.repeat(w, 2)[::2])
    with pytest.raises(ValueError, match="out has shape"):
        call(out=np.empty((3, 3, 3, 5), np.float32))
    with pytest.raises(ValueError, match="bias has shape"):
        call(bias=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="reach outside x"):
        call(off=off + 40)
    with pytest.raises(ValueError, match="reach outside x"):
        call(out_hw=(4, 3), out=np.empty((3, 4, 3, 4), np.float32))
    gy, gw = np.zeros((3, 3, 3, 4), np.float32), np.zeros(len(off))
    kernel.wgrad(x, syn_ptr, off, 1, gy, gw)
    with pytest.raises(ValueError, match="weight gradient: output size, stride or offsets"):
        kernel.wgrad(x, syn_ptr, off + 40, 1, gy, gw)
    with pytest.raises(ValueError, match="reach outside x"):
        kernel.wgrad(x, syn_ptr, off, 1, np.zeros((3, 4, 3, 4), np.float32), gw)
    with pytest.raises(ValueError, match="batch range"):
        call(n_begin=3, n_end=2)
    with pytest.raises(ValueError, match="as a NumPy array"):
        call(x=x.tolist())
    with pytest.raises(TypeError, match="bias must be a NumPy array"):
        call(bias=[0.0, 0.0, 0.0])


def test_layers_refuse_float64_and_copy_noncontiguous_input():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    cc = sparse.CompactConv2d.from_dense(w, None, random_mask(rng, w.shape, 0.5), method="native")
    x = rng.standard_normal((8, 3, 7, 7)).astype(np.float32)
    want = ref.masked_conv2d(x, w, None, cc.to_dense()[2])
    with pytest.raises(TypeError, match="float32"):
        cc(x.astype(np.float64))
    np.testing.assert_allclose(cc(x[::2]), want[::2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cc(np.asfortranarray(x)), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_give_identical_results(threads):
    rng = np.random.default_rng(3)
    net = set_random_masks(models.lenet5(), rng, 0.2)
    x = rng.standard_normal((200, 1, 28, 28)).astype(np.float32)
    cm = sparse.compact(net, method="native")
    old = cpu.get_num_threads()
    try:
        sparse.set_num_threads(1)
        one = cm(x)
        sparse.set_num_threads(threads)
        np.testing.assert_array_equal(cm(x), one)
    finally:
        sparse.set_num_threads(old)


def test_model_fuses_relu_after_linear_layers():
    """LeNet-300-100 is Linear-ReLU-Linear-ReLU-Linear: the ReLUs run inside the kernel."""
    rng = np.random.default_rng(4)
    net = set_random_masks(models.lenet300_100(), rng, 0.1, bias_scale=1.0)
    x = rng.standard_normal((70, 1, 28, 28)).astype(np.float32)
    cm = sparse.compact(net, method="native")
    with no_grad():
        want = net(Tensor(x)).data
    np.testing.assert_allclose(cm(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("padding", [0, 1])
def test_unread_input_maps_are_skipped_by_offsets(padding):
    """The model's Gather of its input is folded into the kernel's offsets (no copy); with
    padding the layer gathers first. Both equal the masked dense model."""
    from minievo import layers as L

    rng = np.random.default_rng(9)
    net = set_random_masks(L.Sequential(L.Conv2d(4, 6, 3, padding=padding), L.ReLU(),
                                        L.Flatten()), rng, 0.7)
    m = net[0].mask.copy()
    m[:, [0, 2]] = 0  # input maps 0 and 2 are never read
    net[0].set_mask(m)
    x = rng.standard_normal((67, 4, 7, 7)).astype(np.float32)
    cm = sparse.compact(net, input_shape=(4, 7, 7), method="native")
    assert type(cm.steps[0]).__name__ == "Gather"
    with no_grad():
        want = net(Tensor(x)).data
    np.testing.assert_allclose(cm(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


# ----- finding, building and falling back ------------------------------------------------------


def test_builds_into_the_cache_once(fresh_native):
    k = native.load()
    assert k.path.parent == fresh_native and k.path.is_file()
    assert k.tile % 8 == 0
    # the library and its recorded hash, no temporary left
    assert sorted(p.name for p in fresh_native.iterdir()) == [k.path.name,
                                                              k.path.name + ".sha256"]
    stamp = k.path.stat().st_mtime_ns
    native.reset()
    assert native.load().path == k.path and k.path.stat().st_mtime_ns == stamp
    assert str(k.path) in native.status()


def test_without_a_compiler_the_scipy_path_takes_over(fresh_native, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-here")
    assert not native.available()
    assert "no-such-compiler-here" in native.status() and "scipy" in native.status()
    with pytest.raises(native.NativeUnavailable, match="no-such-compiler-here"):
        sparse.compact(models.lenet5(), method="native")
    rng = np.random.default_rng(5)
    net = set_random_masks(models.lenet5(), rng, 0.1)
    cm = sparse.compact(net)
    assert "native" not in [layer.method for layer in cm.compact_layers]
    x = rng.standard_normal((5, 1, 28, 28)).astype(np.float32)
    with no_grad():
        want = net(Tensor(x)).data
    np.testing.assert_allclose(cm(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_a_failing_build_is_reported_and_leaves_nothing(fresh_native, monkeypatch):
    monkeypatch.setenv("CC", "false")  # exits 1 without a word
    with pytest.raises(native.NativeUnavailable, match="could not build"):
        native.load()
    assert list(fresh_native.iterdir()) == []


def test_switched_off_by_environment(fresh_native, monkeypatch):
    monkeypatch.setenv("MINIEVO_NATIVE", "0")
    assert not native.available()
    assert "MINIEVO_NATIVE=0" in native.status()
    assert cpu.choose_conv_method(100, 50, 20, 5, 5) == "csr"
