"""What a static review of the GPU code asked for, checked without a GPU where the logic allows
(and on one, marked gpu): no device sync per training step, labels checked once per loader,
dropout masks drawn on the device, one device index per compact layer, device CSR checked once,
and a conv kernel wider than the kernel's shared-memory tile computed, not looped on forever.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from test_training import nan_loss_at  # the NaN-loss fixture of the training tests

import data_loaders as dl
from minievo import backend, init, optim, training
from minievo import functions as F
from minievo import layers as L
from minievo.autograd import Tensor
from minievo.functions.nn import uniform_like
from minievo.kernels.emulate import gpp_path as emulate_gpp
from minievo.sparse.layers import CompactConv2d, CompactLinear

no_gpu = pytest.mark.skipif(not backend.cupy_available(), reason="no CuPy with a GPU")


def mlp(seed: int = 0):
    init.manual_seed(seed)
    return L.Sequential(L.Flatten(), L.Linear(784, 16), L.ReLU(), L.Linear(16, 10))


def digits(backend_name="numpy", n=256, batch_size=32, labels=None):
    x, y = dl.load_dataset("synthetic-digits", "train", n=n)
    if labels is not None:
        y = labels(y.copy())
    return dl.DataLoader(x, y, batch_size=batch_size, seed=0, backend=backend_name)


def count_reads(monkeypatch) -> list:
    """Count the host reads of the running loss and accuracy (each one a sync on a GPU)."""
    reads = []
    real = training.RunningSums.read

    def read(self):
        reads.append(self.batches)
        return real(self)

    monkeypatch.setattr(training.RunningSums, "read", read)
    return reads



def fit(model, loader, epochs=1, **kwargs):
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return training.fit(model, loader, opt, epochs, progress=False, log=None, **kwargs)


# ----- running sums ----------------------------------------------------------------------------


def test_running_sums_equal_the_per_batch_figures_and_find_the_first_bad_batch():
    rng = np.random.default_rng(0)
    sums = training.RunningSums()
    expected_loss = expected_correct = 0
    batches = []
    for step in range(5):
        logits = rng.standard_normal((7, 4)).astype(np.float32)
        labels = rng.integers(0, 4, 7)
        loss = np.asarray(rng.random(), np.float32)
        batches.append((loss, logits, labels))
        expected_loss += float(loss) * 7
        expected_correct += training.accuracy_count(logits, labels)
        sums.add(loss, logits, labels, step)
    assert sums.batches == 5
    assert sums.read() == (expected_loss, expected_correct, None, None)
    assert sums.read() == (0.0, 0, None, None)  # started over
    for step, (loss, logits, labels) in enumerate(batches):
        bad = {2: np.float32("inf"), 4: np.float32("nan")}.get(step, loss)
        sums.add(np.asarray(bad), logits, labels, step)
    _, _, bad_step, bad_value = sums.read()
    assert bad_step == 2 and bad_value == float("inf")  # the first one, not the last


# ----- fit: host reads only where a figure is needed --------------------------------------------


def test_fit_reads_the_sums_once_per_epoch_when_told_and_gets_the_same_history(monkeypatch):
    reads = count_reads(monkeypatch)
    every_step = fit(mlp(), digits(), 2)
    assert reads == [1] * 16  # NumPy default: every batch (free there)
    reads.clear()
    deferred = fit(mlp(), digits(), 2, sync_every=0)
    assert reads == [8, 8]  # one read per epoch, of all its 8 batches
    strip = [{k: v for k, v in row.items() if k != "train_seconds"} for row in every_step.history]
    assert strip == [{k: v for k, v in row.items() if k != "train_seconds"}
                     for row in deferred.history]
    reads.clear()
    fit(mlp(), digits(), 1, sync_every=3)
    assert reads == [3, 3, 2]


@pytest.mark.gpu
@no_gpu
def test_on_a_gpu_the_sums_are_read_once_per_epoch_by_default(monkeypatch):
    reads = count_reads(monkeypatch)
    model = mlp().to("cupy")
    state = fit(model, digits("cupy"), 2)
    assert reads == [8, 8]
    host = fit(mlp(), digits(), 2)
    for a, b in zip(state.history, host.history):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-3
        assert abs(a["train_accuracy"] - b["train_accuracy"]) <= 2 / 256


def test_deferred_nan_loss_names_its_own_batch(monkeypatch, tmp_path):
    path = tmp_path / "run.npz"
    model = mlp()
    state = fit(model, digits(), 1, checkpoint_path=path, sync_every=0)
    good = path.read_bytes()
    nan_loss_at(monkeypatch, 3)
    with pytest.raises(training.TrainingDiverged, match="loss became nan at epoch 2, batch 3"):
        fit(model, digits(), 2, checkpoint_path=path, state=state, sync_every=0)
    assert path.read_bytes() == good  # read at the end of the epoch, before any checkpoint


def test_progress_redraws_are_the_read_points(monkeypatch):
    reads = count_reads(monkeypatch)
    stream = io.StringIO()
    model = mlp()
    opt = optim.SGD(model.parameters(), lr=0.05)
    monkeypatch.setattr("sys.stderr", stream)
    training.fit(model, digits(n=640), opt, 1, log=None, sync_every=0)  # 20 batches
    lines = stream.getvalue().splitlines()
    assert len(reads) == len(lines) >= 10  # one read per printed line (every 10%)
    losses = [float(line.split("loss ")[1].split()[0]) for line in lines]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_a_terminal_bar_redraws_at_most_every_redraw_seconds():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    bar = training.ProgressBar(5000, "epoch", stream=stream, redraw_seconds=60)
    assert bar.due()
    for _ in range(5000):
        bar.update(loss=0.5)
    draws = stream.getvalue().count("\r")
    assert draws == 2  # the first step and the last one


# ----- labels: checked once per loader ----------------------------------------------------------


def test_loader_labels_are_checked_once_not_per_batch(monkeypatch):
    calls = []
    real = F.softmax_cross_entropy

    def loss(logits, labels, **kwargs):
        calls.append(kwargs.get("check_labels", True))
        return real(logits, labels, **kwargs)

    monkeypatch.setattr(F, "softmax_cross_entropy", loss)
    model = mlp()
    fit(model, digits(), 1)
    training.evaluate(model, digits(n=64))
    assert calls == [False] * 10  # 8 training batches and 2 evaluation batches


@pytest.mark.parametrize("bad", [10, -1])
def test_a_label_outside_the_classes_is_refused_before_training(bad):
    def corrupt(y):
        y = y.astype(np.int64)
        y[200] = bad
        return y

    model = mlp()
    before = model.state_dict()["1.weight"].copy()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\), got "):
        fit(model, digits(labels=corrupt), 1)
    np.testing.assert_array_equal(model.state_dict()["1.weight"], before)  # no step taken
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        training.evaluate(model, digits(labels=corrupt))


def test_a_plain_list_of_batches_is_still_checked_by_the_loss():
    x = np.zeros((4, 1, 28, 28), np.float32)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\), got 0..12"):
        fit(mlp(), [(x, np.array([0, 1, 2, 12]))], 1)


def test_the_loss_skips_its_check_only_when_told():
    logits = Tensor(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="labels must lie"):
        F.softmax_cross_entropy(logits, np.array([0, 3]))
    assert np.isfinite(float(F.softmax_cross_entropy(logits, np.array([0, 2]),
                                                     check_labels=False).data))


# ----- dropout ----------------------------------------------------------------------------------


def test_dropout_on_numpy_draws_from_the_generator_given():
    x = np.ones((50, 40), np.float32)
    a = uniform_like(x, np.random.default_rng(3))
    np.testing.assert_array_equal(a, np.random.default_rng(3).random((50, 40), np.float32))
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        uniform_like(x, rng=42)


@pytest.mark.gpu
@no_gpu
def test_dropout_mask_is_drawn_on_the_device():
    import cupy as cp

    layer = L.Dropout(0.25, seed=7)
    state = layer.rng.bit_generator.state
    x = Tensor(cp.ones((400, 300), cp.float32))
    first = layer(x).data
    after_first = layer.rng.bit_generator.state
    assert after_first != state  # one seed drawn from the host generator ...
    second = layer(x).data
    assert layer.rng.bit_generator.state == after_first  # ... and never again
    assert isinstance(first, cp.ndarray) and not cp.array_equal(first, second)
    kept = float((first != 0).mean())
    assert abs(kept - 0.75) < 0.01
    values = cp.unique(first).get()
    assert values.size == 2 and values[0] == 0 and abs(values[1] - 1 / 0.75) < 1e-6
    again = L.Dropout(0.25, seed=7)
    cp.testing.assert_array_equal(again(x).data, first)  # same seed, same masks


# ----- compact layers: one device index, the device CSR checked once ----------------------------


def _compact_linear(method="csr"):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 6)).astype(np.float32)
    m = rng.random((5, 6)) < 0.6
    return CompactLinear.from_dense(w, np.zeros(5, np.float32), m, method=method)


def test_a_layer_keeps_one_gather_per_input_index():
    layer = _compact_linear("csr")
    index = np.array([0, 2, 3, 5, 6, 7])
    x = np.random.default_rng(1).standard_normal((9, 4)).astype(np.float32)
    y1 = layer.forward_bl(x, in_index=index)
    gather = layer._gather
    y2 = layer.forward_bl(x, in_index=index)
    assert layer._gather is gather and gather.source is index
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_allclose(y1, layer.forward_bl(np.ascontiguousarray(x[index])), rtol=1e-6)
    other = index.copy()
    layer.forward_bl(x, in_index=other)
    assert layer._gather is not gather and layer._gather.source is other


@pytest.mark.gpu
@no_gpu
def test_the_device_index_is_copied_once():
    import cupy as cp

    layer = _compact_linear().to("cupy")
    index = np.array([0, 2, 3, 5, 6, 7])
    x = cp.asarray(np.random.default_rng(2).standard_normal((9, 4)).astype(np.float32))
    layer.forward_bl(x, in_index=index)
    dev = layer._gather._dev_index
    layer.forward_bl(x, in_index=index)
    assert layer._gather._dev_index is dev and isinstance(dev, cp.ndarray)


@pytest.mark.gpu
@no_gpu
def test_the_device_csr_is_checked_when_moved():
    layer = _compact_linear()
    layer.indptr[-1] += 3  # corrupted after construction: would read past the weights
    with pytest.raises(ValueError, match="CompactLinear: indptr must start at 0"):
        layer.to("cupy")
    conv = CompactConv2d.from_dense(np.ones((2, 3, 3, 3), np.float32), None,
                                    np.ones((2, 3, 3, 3), np.float32))
    conv.indices[0] = 3
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        conv.to("cupy")


# ----- the conv kernel: a kernel wider than the shared-memory tile ------------------------------


def _direct_conv(kernel, x, weight, bias, mask, stride, padding, layout, threads):
    """Launch the conv kernel with the arguments launch_conv2d would pass, without its host
    checks (which refuse kh*kw > CONV_TILE_FLOATS); returns y as (N, O, OH, OW)."""
    from minievo.sparse import reference as ref

    indptr, indices, kernels = ref.kernel_csr(weight, mask)
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    oh, ow = ref.conv_output_hw(h, w, kh, kw, stride, padding)
    if layout == "NCHW":
        xin = np.ascontiguousarray(x)
        y = np.zeros((n, o, oh, ow), np.float32)
        xs, ys = [s // 4 for s in xin.strides], [s // 4 for s in y.strides]
    else:  # CHWN: strides of the N, C, H, W axes in that order
        xin = np.ascontiguousarray(x.transpose(1, 2, 3, 0))
        y = np.zeros((o, oh, ow, n), np.float32)
        xs = [xin.strides[a] // 4 for a in (3, 0, 1, 2)]
        ys = [y.strides[a] // 4 for a in (3, 0, 1, 2)]
    sizes = (n, c, h, w, o, kh, kw, oh, ow, stride, padding)
    args = (xin, indptr, indices, kernels, bias, y, *map(np.int32, (*sizes, *xs, *ys)))
    kernel((-(-n * oh * ow // threads), o), (threads,), args, timeout=120)
    return y if layout == "NCHW" else y.transpose(3, 0, 1, 2)


@pytest.mark.skipif(emulate_gpp() is None, reason="g++ is not installed: the emulation needs it")
@pytest.mark.parametrize("n,c,h,w,o,stride,padding,layout,threads", [
    (2, 1, 49, 49, 3, 1, 3, "NCHW", 64),   # 47x47 = 2,209 taps > 2,048: two slices per kernel
    (2, 2, 50, 52, 3, 2, 2, "CHWN", 32),   # two input maps, stride 2, the batch-last layout
])
def test_conv_kernel_wider_than_a_tile_ends_and_matches_numpy(n, c, h, w, o, stride, padding,
                                                              layout, threads):
    from minievo.kernels import emulate
    from minievo.sparse import gpu
    from minievo.sparse import reference as ref

    rng = np.random.default_rng(47)
    k = 47
    assert k * k > gpu.CONV_TILE_FLOATS  # per_tile would be 0: the loop that never ended
    weight = rng.standard_normal((o, c, k, k)).astype(np.float32)
    mask = (rng.random(weight.shape) < 0.6).astype(np.float32)  # masked taps inside a kernel
    mask[1] = 0  # output map 1 has no live kernel: its bias alone
    bias = rng.standard_normal(o).astype(np.float32)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    conv = emulate.EmulatedModule("sparse_conv2d.cu").get_function(gpu.CONV_KERNEL)
    with pytest.raises(ValueError, match="too large for the shared-memory tile"):
        gpu.launch_conv2d(conv, x, *ref.kernel_csr(weight, mask), bias, stride, padding)
    y = _direct_conv(conv, x, weight, bias, mask, stride, padding, layout, threads)
    expected = ref.masked_conv2d(x, weight, bias, mask, stride, padding)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    np.testing.assert_array_equal(y[:, 1], np.broadcast_to(bias[1], y[:, 1].shape))
