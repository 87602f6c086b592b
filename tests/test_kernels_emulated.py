"""The .cu kernels, compiled by g++ with cuda_emu.h and run on the CPU, against NumPy.

The same test bodies run the kernels through CuPy for real when a GPU is present (the
``cupy`` runner, marked gpu); those need no g++ (only the emulated runner does). The launch
code under test is minievo.sparse.gpu, the one the compact layers use on a GPU. Shapes too
large for the emulator (batch 10,000, many shared-memory tiles) run on a GPU only.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from minievo import backend
from minievo.kernels import emulate
from minievo.sparse import gpu
from minievo.sparse import reference as ref

NO_GPP = emulate.gpp_path() is None
needs_gpp = pytest.mark.skipif(NO_GPP, reason="g++ is not installed: the CUDA emulation needs it")
needs_gpu = [pytest.mark.gpu,
             pytest.mark.skipif(not backend.cupy_available(), reason="no CuPy with a GPU")]

DENSITIES = [0.01, 0.05, 0.1, 0.2, 0.5, 1.0]


@pytest.fixture(scope="session")
def emu_cache():
    """Every emulator fixture needs this one: without g++ they all skip (the cupy runner and
    the GPU-only tests do not use them)."""
    if NO_GPP:
        if os.environ.get("MINIEVO_REQUIRE_SANITIZERS") == "1":  # CI: the emulation must run
            pytest.fail("g++ is not installed, and MINIEVO_REQUIRE_SANITIZERS=1 requires it")
        pytest.skip("g++ is not installed: the CUDA emulation needs it")
    # The default cache ($MINIEVO_EMU_CACHE or the temp dir): builds are keyed by a hash of the
    # sources and flags, so a rerun skips the ~2 s g++ build of every module.
    return emulate.default_cache_dir()


#: CI sets this (.ci/run): there a sanitizer that cannot run fails the tests instead of
#: skipping them, so the kernels are always checked under AddressSanitizer and TSan there.
REQUIRE_SANITIZERS = os.environ.get("MINIEVO_REQUIRE_SANITIZERS") == "1"


def no_sanitizer(name: str) -> None:
    """Skip a test that needs a sanitizer this machine's compiler cannot run (elsewhere);
    fail it where MINIEVO_REQUIRE_SANITIZERS=1."""
    message = f"{name} does not run on this machine"
    if REQUIRE_SANITIZERS:
        pytest.fail(f"{message}, and MINIEVO_REQUIRE_SANITIZERS=1 requires it")
    pytest.skip(message)


def sanitized(module):
    """The module; under MINIEVO_REQUIRE_SANITIZERS=1 it must have been built with ASan."""
    if module.sanitizer != "address" and REQUIRE_SANITIZERS:
        no_sanitizer("AddressSanitizer")
    return module


@pytest.fixture(scope="session")
def emu_conv(emu_cache):
    module = emulate.EmulatedModule("sparse_conv2d.cu", cache_dir=emu_cache)
    return sanitized(module).get_function(gpu.CONV_KERNEL)


@pytest.fixture(scope="session")
def emu_linear(emu_cache):
    module = emulate.EmulatedModule("sparse_linear.cu", cache_dir=emu_cache)
    return sanitized(module).get_function(gpu.LINEAR_KERNEL)


class Runner:
    """Runs a kernel on NumPy arrays: emulated on the CPU, or through CuPy on a GPU."""

    def __init__(self, name, conv, linear):
        self.name, self.conv, self.linear = name, conv, linear

    def dev(self, a):
        return backend.to_backend(a, "cupy") if self.name == "cupy" else a

    def host(self, a):
        return backend.to_numpy(a)


def cupy_runner() -> Runner:
    from minievo.kernels import get_kernel

    return Runner("cupy", get_kernel(gpu.CONV_FILE, gpu.CONV_KERNEL),
                  get_kernel(gpu.LINEAR_FILE, gpu.LINEAR_KERNEL))


@pytest.fixture(params=[
    pytest.param("emulated", id="emulated", marks=needs_gpp),
    pytest.param("cupy", id="cupy", marks=needs_gpu),
])
def runner(request):
    """The emulated kernels (g++ needed) or the real ones (a GPU needed, no g++)."""
    if request.param == "cupy":
        return cupy_runner()
    return Runner("emulated", request.getfixturevalue("emu_conv"),
                  request.getfixturevalue("emu_linear"))


@pytest.fixture
def gpu_runner():
    """The real kernels only: for shapes the emulator would take minutes over."""
    if not backend.cupy_available():
        pytest.skip("no CuPy with a GPU")
    return cupy_runner()


def _conv_case(rng, n, c, h, w, o, k, density, kernel_level=True):
    weight = rng.standard_normal((o, c, k, k)).astype(np.float32)
    if kernel_level:
        live = rng.random((o, c)) < density
        mask = np.broadcast_to(live[:, :, None, None], weight.shape).astype(np.float32)
    else:
        mask = (rng.random(weight.shape) < density).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    return x, weight, bias, mask


def _assert_close(actual, expected, rtol=1e-5):
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def _run_conv(runner, x, weight, bias, mask, stride, padding, layout="NCHW", threads=None):
    indptr, indices, kernels = ref.kernel_csr(weight, mask)
    xin = x if layout == "NCHW" else np.ascontiguousarray(x.transpose(1, 2, 3, 0))
    y = gpu.launch_conv2d(runner.conv, runner.dev(xin), runner.dev(indptr), runner.dev(indices),
                          runner.dev(kernels), runner.dev(bias), stride, padding, layout=layout,
                          threads=threads)
    y = runner.host(y)
    return y if layout == "NCHW" else y.transpose(3, 0, 1, 2)


@pytest.mark.parametrize("density", DENSITIES)
def test_conv_kernel_matches_reference_across_densities(runner, density):
    rng = np.random.default_rng(int(density * 1000))
    x, w, b, m = _conv_case(rng, 2, 16, 10, 10, 24, 3, density)
    y = _run_conv(runner, x, w, b, m, stride=1, padding=1, layout="CHWN")
    _assert_close(y, ref.masked_conv2d(x, w, b, m, 1, 1))


@pytest.mark.parametrize(
    "n,c,h,w,o,k,stride,padding,threads,layout",
    [
        (3, 5, 10, 10, 6, 3, 1, 0, 48, "NCHW"),   # 64-pixel planes, 48 threads: ragged tile
        (2, 4, 11, 7, 3, 5, 2, 2, 32, "CHWN"),    # stride 2, padding 2, non-square input
        (1, 100, 6, 6, 3, 5, 1, 0, 32, "NCHW"),   # 100 live kernels per map: two smem tiles
        (2, 20, 12, 12, 50, 5, 1, 0, None, "CHWN"),  # LeNet-5 conv2
        (5, 1, 28, 28, 4, 5, 1, 0, 96, "NCHW"),   # LeNet-5 conv1 shape, 96-thread blocks
        (2, 3, 5, 5, 2, 1, 1, 0, 33, "NCHW"),     # 1x1 kernels, a block that is no warp multiple
    ],
)
def test_conv_kernel_shapes_and_block_sizes(runner, n, c, h, w, o, k, stride, padding, threads,
                                            layout):
    rng = np.random.default_rng(n * 1000 + c)
    x, wt, b, m = _conv_case(rng, n, c, h, w, o, k, 0.6, kernel_level=False)
    y = _run_conv(runner, x, wt, b, m, stride, padding, layout, threads)
    _assert_close(y, ref.masked_conv2d(x, wt, b, m, stride, padding))


def test_conv_kernel_equals_the_csr_definition(runner):
    rng = np.random.default_rng(7)
    x, w, b, m = _conv_case(rng, 2, 6, 8, 8, 5, 3, 0.3)
    indptr, indices, kernels = ref.kernel_csr(w, m)
    y = _run_conv(runner, x, w, b, m, 1, 1)
    _assert_close(y, ref.csr_conv2d(x, indptr, indices, kernels, b, 1, 1))


def test_conv_output_map_without_kernels_is_its_bias(runner):
    rng = np.random.default_rng(3)
    x, w, b, m = _conv_case(rng, 2, 3, 6, 6, 4, 3, 1.0)
    m[1] = 0
    m[3] = 0
    y = _run_conv(runner, x, w, b, m, 1, 0)
    np.testing.assert_array_equal(y[:, 1], np.full((2, 4, 4), b[1], np.float32))
    np.testing.assert_array_equal(y[:, 3], np.full((2, 4, 4), b[3], np.float32))
    _assert_close(y, ref.masked_conv2d(x, w, b, m))


def test_conv_non_contiguous_input_is_copied_not_misread(runner):
    rng = np.random.default_rng(4)
    x, w, b, m = _conv_case(rng, 2, 3, 8, 16, 4, 3, 0.7)
    xs = x[:, :, :, ::2]  # not C-contiguous: copied first (documented rule)
    indptr, indices, kernels = ref.kernel_csr(w, m)
    y = gpu.launch_conv2d(runner.conv, runner.dev(xs), runner.dev(indptr), runner.dev(indices),
                          runner.dev(kernels), runner.dev(b))
    _assert_close(runner.host(y), ref.masked_conv2d(np.ascontiguousarray(xs), w, b, m))


def _run_linear(runner, x, weight, bias, mask, layout="NF", threads=None):
    wm = weight * mask
    rows, cols = np.nonzero(mask)
    indptr = np.zeros(weight.shape[0] + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=weight.shape[0]), out=indptr[1:])
    xin = x if layout == "NF" else np.ascontiguousarray(x.T)
    y = gpu.launch_linear(runner.linear, runner.dev(xin), runner.dev(indptr),
                          runner.dev(cols.astype(np.int32)),
                          runner.dev(np.ascontiguousarray(wm[rows, cols])), runner.dev(bias),
                          layout=layout, threads=threads)
    y = runner.host(y)
    return y if layout == "NF" else y.T


def _linear_case(rng, n, f, o, density):
    w = rng.standard_normal((o, f)).astype(np.float32)
    m = (rng.random((o, f)) < density).astype(np.float32)
    return (rng.standard_normal((n, f)).astype(np.float32), w,
            rng.standard_normal(o).astype(np.float32), m)


@pytest.mark.parametrize("density", DENSITIES)
def test_linear_kernel_matches_reference_across_densities(runner, density):
    rng = np.random.default_rng(int(density * 100) + 1)
    x, w, b, m = _linear_case(rng, 40, 120, 30, density)
    _assert_close(_run_linear(runner, x, w, b, m, layout="FN"), ref.masked_linear(x, w, b, m))


@pytest.mark.parametrize(
    "n,f,o,threads,layout",
    [
        (37, 50, 13, 16, "NF"),   # batch not a multiple of the block
        (5, 700, 9, 32, "FN"),    # 700 synapses per row: two shared-memory tiles
        (1, 8, 3, None, "NF"),    # a single image
        (300, 20, 4, 96, "FN"),   # several tiles over the batch
    ],
)
def test_linear_kernel_shapes_and_block_sizes(runner, n, f, o, threads, layout):
    rng = np.random.default_rng(n + f)
    x, w, b, m = _linear_case(rng, n, f, o, 1.0 if f == 700 else 0.4)
    _assert_close(_run_linear(runner, x, w, b, m, layout, threads),
                  ref.masked_linear(x, w, b, m))


def test_linear_kernel_equals_the_csr_definition(runner):
    rng = np.random.default_rng(11)
    x, w, b, m = _linear_case(rng, 9, 25, 7, 0.3)
    rows, cols = np.nonzero(m)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=7))])
    expected = ref.csr_linear(x, indptr, cols, (w * m)[rows, cols], b)
    _assert_close(_run_linear(runner, x, w, b, m), expected)


# ----- bad input -----------------------------------------------------------------------------


def _lenet_conv2_args(rng):
    x, w, b, m = _conv_case(rng, 2, 4, 8, 8, 3, 3, 0.5)
    indptr, indices, kernels = ref.kernel_csr(w, m)
    return x, indptr, indices, kernels, b


def test_conv_launch_refuses_float64_and_wrong_index_types(emu_conv):
    x, indptr, indices, kernels, b = _lenet_conv2_args(np.random.default_rng(0))
    with pytest.raises(TypeError, match="x must be float32.*float64"):
        gpu.launch_conv2d(emu_conv, x.astype(np.float64), indptr, indices, kernels, b)
    with pytest.raises(TypeError, match="indices must be int32"):
        gpu.launch_conv2d(emu_conv, x, indptr, indices.astype(np.int64), kernels, b)
    with pytest.raises(TypeError, match="bias must be float32"):
        gpu.launch_conv2d(emu_conv, x, indptr, indices, kernels, b.astype(np.float64))


def test_conv_launch_shape_errors(emu_conv):
    x, indptr, indices, kernels, b = _lenet_conv2_args(np.random.default_rng(0))
    with pytest.raises(ValueError, match="bias has shape"):
        gpu.launch_conv2d(emu_conv, x, indptr, indices, kernels, b[:-1])
    with pytest.raises(ValueError, match="kernel indices but"):
        gpu.launch_conv2d(emu_conv, x, indptr, indices, kernels[:-1], b)
    with pytest.raises(ValueError, match="4-D"):
        gpu.launch_conv2d(emu_conv, x[0], indptr, indices, kernels, b)
    with pytest.raises(ValueError, match="output would be empty"):
        gpu.launch_conv2d(emu_conv, x[:, :, :2, :2], indptr, indices, kernels, b)
    bad = indptr.copy()
    bad[1] = bad[2] + 1
    with pytest.raises(ValueError, match="never decrease"):
        gpu.launch_conv2d(emu_conv, x, bad, indices, kernels, b)
    with pytest.raises(ValueError, match="layout"):
        gpu.launch_conv2d(emu_conv, x, indptr, indices, kernels, b, layout="NHWC")


def test_linear_launch_errors(emu_linear):
    rng = np.random.default_rng(1)
    x, w, b, m = _linear_case(rng, 4, 6, 3, 0.5)
    rows, cols = np.nonzero(m)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=3))]).astype(np.int32)
    vals = (w * m)[rows, cols]
    cols = cols.astype(np.int32)
    with pytest.raises(TypeError, match="float32"):
        gpu.launch_linear(emu_linear, x.astype(np.float64), indptr, cols, vals, b)
    with pytest.raises(ValueError, match="values"):
        gpu.launch_linear(emu_linear, x, indptr, cols, vals[:-1], b)
    with pytest.raises(ValueError, match="end at the number of indices"):
        gpu.launch_linear(emu_linear, x, indptr[:-1], cols, vals, b[:-1])
    with pytest.raises(ValueError, match=r"bias has shape \(2,\), expected \(3,\)"):
        gpu.launch_linear(emu_linear, x, indptr, cols, vals, b[:-1])
    with pytest.raises(ValueError, match="2-D"):
        gpu.launch_linear(emu_linear, x[None], indptr, cols, vals, b)


def test_conv_without_taps_is_refused_before_launch(runner):
    x, indptr, indices, kernels, b = _lenet_conv2_args(np.random.default_rng(2))
    flat = np.zeros((kernels.shape[0], 3, 0), np.float32)
    with pytest.raises(ValueError, match="3x0 have no taps"):
        gpu.launch_conv2d(runner.conv, runner.dev(x), runner.dev(indptr), runner.dev(indices),
                          runner.dev(flat), runner.dev(b))


def _bad_csr_cases(indptr, indices, cols):
    """(indptr, indices, message) for each way a CSR can be wrong: start, a decreasing step,
    end, an index too large, a negative one."""
    start = indptr.copy()
    start[0] = 1
    down = indptr.copy()
    down[1] = down[2] + 1
    end = indptr.copy()
    end[-1] += 7  # would read 7 weights past the end
    outside = indices.copy()
    outside[-1] = cols
    negative = indices.copy()
    negative[0] = -1
    never = "start at 0, never decrease"
    return [(start, indices, never), (down, indices, "1 decreasing"), (end, indices, never),
            (indptr, outside, "outside"), (indptr, negative, "outside")]


def test_wrong_csr_is_refused_where_it_lives(runner):
    """On a GPU the CSR values are checked on the device (one host read): a wrong indptr would
    read past the weights, with garbage or an illegal-address error that poisons the
    context."""
    rng = np.random.default_rng(3)
    x, indptr, indices, kernels, b = _lenet_conv2_args(rng)
    assert indices.size >= 2
    for ip, ix, message in _bad_csr_cases(indptr, indices, x.shape[1]):
        with pytest.raises(ValueError, match=message):
            gpu.launch_conv2d(runner.conv, runner.dev(x), runner.dev(ip), runner.dev(ix),
                              runner.dev(kernels), runner.dev(b))
    xl, w, bl, m = _linear_case(rng, 4, 6, 3, 0.7)
    rows, cols = np.nonzero(m)
    lp = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=3))]).astype(np.int32)
    vals = np.ascontiguousarray((w * m)[rows, cols])
    for ip, ix, message in _bad_csr_cases(lp, cols.astype(np.int32), 6):
        with pytest.raises(ValueError, match=message):
            gpu.launch_linear(runner.linear, runner.dev(xl), runner.dev(ip), runner.dev(ix),
                              runner.dev(vals), runner.dev(bl))


def test_csr_errors_counts_each_fault():
    indptr = np.array([0, 2, 1, 4], np.int32)
    indices = np.array([0, 5, -1, 2], np.int32)
    assert gpu.csr_errors(indptr, indices, cols=3).tolist() == [0, 0, 1, 2]
    assert gpu.csr_errors(indptr + 1, indices).tolist() == [1, 1, 1, 0]


class _OnDevice:
    """An array stand-in that only says which GPU holds it (only the id is read)."""

    def __init__(self, dev_id):
        self.device = type("Device", (), {"id": dev_id})()


def test_arrays_of_another_gpu_are_refused():
    gpu.check_same_device({"x": _OnDevice(0), "bias": np.zeros(2)}, current=0)
    with pytest.raises(ValueError, match="indptr lives on GPU 1 but the current device is "
                                         "GPU 0.*cupy.cuda.Device.1."):
        gpu.check_same_device({"x": _OnDevice(0), "indptr": _OnDevice(1)}, current=0)


@pytest.mark.gpu
def test_launch_with_arrays_of_another_gpu_is_refused(gpu_runner):
    import cupy as cp

    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    x, indptr, indices, kernels, b = _lenet_conv2_args(np.random.default_rng(4))
    with cp.cuda.Device(1):
        x1 = cp.asarray(x)
    with pytest.raises(ValueError, match="x lives on GPU 1 but the current device is GPU 0"):
        gpu.launch_conv2d(gpu_runner.conv, x1, *map(cp.asarray, (indptr, indices, kernels, b)))


def test_conv_with_several_256_kernel_tiles(runner):
    """1x1 kernels: a shared-memory tile holds 256 of them, so 800 live input maps take four
    tiles (the last one partial) per output map."""
    rng = np.random.default_rng(12)
    x, w, b, m = _conv_case(rng, 2, 800, 3, 3, 3, 1, 1.0)
    _assert_close(_run_conv(runner, x, w, b, m, 1, 0, "CHWN", 64),
                  ref.masked_conv2d(x, w, b, m), rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["CHWN", "NCHW"])
def test_conv_at_batch_10000(gpu_runner, layout):
    """LeNet-5 conv2 at batch 10,000 (640,000 outputs per map, 2,500 blocks of 256): the grid
    and 64-bit offsets at a size the emulator cannot reach."""
    rng = np.random.default_rng(13)
    x, w, b, m = _conv_case(rng, 10000, 20, 12, 12, 50, 5, 0.3)
    _assert_close(_run_conv(gpu_runner, x, w, b, m, 1, 0, layout), ref.masked_conv2d(x, w, b, m),
                  rtol=1e-4)


@pytest.mark.gpu
def test_conv_1x1_with_300_live_maps_at_batch_10000(gpu_runner):
    rng = np.random.default_rng(14)
    x, w, b, m = _conv_case(rng, 10000, 300, 4, 4, 8, 1, 1.0)
    _assert_close(_run_conv(gpu_runner, x, w, b, m, 1, 0, "CHWN"), ref.masked_conv2d(x, w, b, m),
                  rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["FN", "NF"])
def test_linear_at_batch_10000(gpu_runner, layout):
    rng = np.random.default_rng(15)
    x, w, b, m = _linear_case(rng, 10000, 800, 500, 0.05)
    _assert_close(_run_linear(gpu_runner, x, w, b, m, layout), ref.masked_linear(x, w, b, m),
                  rtol=1e-4)


def test_emulated_kernel_refuses_what_a_gpu_would_misread(emu_linear):
    f32 = np.zeros(4, np.float32)
    i32 = np.zeros(2, np.int32)
    out = np.zeros(4, np.float32)
    good = (f32, i32, np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(1, np.float32),
            out, *(np.int32(1),) * 7)
    emu_linear((1,), (32,), good)
    with pytest.raises(TypeError, match="numpy.int32 scalar"):
        emu_linear((1,), (32,), good[:6] + (1,) + good[7:])
    with pytest.raises(TypeError, match="float32, got float64"):
        emu_linear((1,), (32,), (f32.astype(np.float64),) + good[1:])
    with pytest.raises(TypeError, match="takes 13 arguments"):
        emu_linear((1,), (32,), good[:-1])


# ----- the emulator itself -------------------------------------------------------------------

TEST_KERNELS = r"""
extern "C" __global__ void block_sum(const float* __restrict__ x, float* __restrict__ out,
                                     int n) {
    __shared__ float s[256];
    const int tid = (int)threadIdx.x;
    const int i = (int)(blockIdx.x * blockDim.x) + tid;
    s[tid] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int step = (int)blockDim.x / 2; step > 0; step /= 2) {
        if (tid < step) s[tid] += s[tid + step];
        __syncthreads();
    }
    if (tid == 0) out[blockIdx.x] = s[0];
}

extern "C" __global__ void reverse_block(float* x, int n) {
    __shared__ float s[64];
    const int tid = (int)threadIdx.x;
    if (tid >= n) return;  // divergent when n < blockDim.x
    s[tid] = x[tid];
    __syncthreads();
    x[tid] = s[n - 1 - tid];
}

extern "C" __global__ void ids(int* out) {
    const int b = (int)(blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z));
    const int t = (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
    const int nt = (int)(blockDim.x * blockDim.y * blockDim.z);
    out[b * nt + t] = b * 1000 + t;
}

extern "C" __global__ void write_past_end(float* x, int n) {
    x[(int)threadIdx.x + n] = 1.0f;
}

extern "C" __global__ void racy_reverse(float* x) {
    __shared__ float s[64];
    const int tid = (int)threadIdx.x;
    s[tid] = x[tid];
    x[tid] = s[63 - tid];  // missing __syncthreads(): reads what another thread writes
}
"""


@pytest.fixture(scope="session")
def test_module(tmp_path_factory, emu_cache):
    src = tmp_path_factory.mktemp("cu") / "emu_checks.cu"
    src.write_text(TEST_KERNELS)
    return sanitized(emulate.EmulatedModule(src, cache_dir=emu_cache))


@pytest.mark.parametrize("n,threads", [(1000, 256), (77, 32), (64, 64)])
def test_shared_memory_is_shared_by_the_block_and_barriers_hold(test_module, n, threads):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    blocks = -(-n // threads)
    out = np.zeros(blocks, np.float32)
    test_module.get_function("block_sum")((blocks,), (threads,), (x, out, np.int32(n)))
    padded = np.zeros(blocks * threads, np.float32)
    padded[:n] = x
    np.testing.assert_allclose(out, padded.reshape(blocks, threads).sum(1), rtol=1e-5, atol=1e-5)


def test_index_variables_in_3d(test_module):
    grid, block = (2, 3, 2), (4, 3, 2)
    nb, nt = 12, 24
    out = np.full(nb * nt, -1, np.int32)
    test_module.get_function("ids")(grid, block, (out,))
    expected = (np.arange(nb)[:, None] * 1000 + np.arange(nt)[None, :]).reshape(-1)
    np.testing.assert_array_equal(out, expected)


def test_divergent_syncthreads_is_reported(test_module):
    kernel = test_module.get_function("reverse_block")
    x = np.arange(32, dtype=np.float32)
    kernel((1,), (32,), (x, np.int32(32)))  # every thread reaches the barrier: fine
    np.testing.assert_array_equal(x, np.arange(32, dtype=np.float32)[::-1])
    with pytest.raises(emulate.EmulationError, match="divergent __syncthreads"):
        kernel((1,), (32,), (np.zeros(32, np.float32), np.int32(20)))


def test_invalid_launch_configuration_is_refused(test_module):
    kernel = test_module.get_function("ids")
    with pytest.raises(emulate.EmulationError, match="more than 1024 threads"):
        kernel((1,), (1025,), (np.zeros(1025, np.int32),))
    with pytest.raises(emulate.EmulationError, match="zero"):
        kernel((0,), (32,), (np.zeros(32, np.int32),))


def test_out_of_bounds_write_is_caught(test_module):
    if test_module.sanitizer != "address":
        no_sanitizer("AddressSanitizer")
    with pytest.raises(emulate.EmulationError, match="AddressSanitizer"):
        test_module.get_function("write_past_end")((1,), (4,), (np.zeros(4, np.float32),
                                                                np.int32(2)))


@pytest.fixture(scope="session")
def tsan(tmp_path_factory, emu_cache):
    src = tmp_path_factory.mktemp("cu-tsan") / "emu_checks.cu"
    src.write_text(TEST_KERNELS)
    module = emulate.EmulatedModule(src, sanitize="thread", cache_dir=emu_cache)
    if module.sanitizer != "thread":
        no_sanitizer("ThreadSanitizer")
    return module


def test_missing_syncthreads_is_a_data_race(tsan):
    with pytest.raises(emulate.EmulationError, match="data race"):
        tsan.get_function("racy_reverse")((1,), (64,), (np.arange(64, dtype=np.float32),))


def test_shipped_kernels_have_no_data_race(tsan, emu_cache):
    conv = emulate.EmulatedModule("sparse_conv2d.cu", sanitize="thread", cache_dir=emu_cache)
    linear = emulate.EmulatedModule("sparse_linear.cu", sanitize="thread", cache_dir=emu_cache)
    run = Runner("emulated", conv.get_function(gpu.CONV_KERNEL),
                 linear.get_function(gpu.LINEAR_KERNEL))
    rng = np.random.default_rng(5)
    x, w, b, m = _conv_case(rng, 1, 100, 6, 6, 2, 5, 1.0)  # two shared-memory tiles per map
    _assert_close(_run_conv(run, x, w, b, m, 1, 0, threads=32), ref.masked_conv2d(x, w, b, m))
    x, w, b, m = _linear_case(rng, 40, 600, 3, 1.0)
    _assert_close(_run_linear(run, x, w, b, m, "FN", 32), ref.masked_linear(x, w, b, m))


def test_compact_model_gpu_path_with_emulated_kernels(emu_conv, emu_linear):
    """Every compact layer of a model with dead structure, run the way it runs on a GPU
    (batch-last layout, bias maps, launch shapes), equals the CPU path."""
    from minievo import layers as L
    from minievo import sparse
    from minievo.sparse.layers import CompactConv2d, CompactLinear
    from minievo.sparse.synthetic import set_random_masks

    rng = np.random.default_rng(21)
    net = L.Sequential(L.Conv2d(3, 8, 3, padding=1), L.ReLU(), L.MaxPool2d(2),
                       L.Conv2d(8, 6, 3, padding=1), L.MaxPool2d(2), L.Flatten(),
                       L.Linear(24, 16), L.ReLU(), L.Linear(16, 5))
    set_random_masks(net, rng, 0.5, kernel_level=False, bias_scale=1.0)
    mask = net[0].mask.copy()
    mask[[1, 6]] = 0  # constant maps (positive, so ReLU keeps them): conv 2 gets a bias map
    net[0].set_mask(mask)
    net[0].bias.data[[1, 6]] = 1.0
    cm = sparse.compact(net, input_shape=(3, 8, 8))
    x = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    h = np.ascontiguousarray(x.transpose(1, 2, 3, 0))
    for step in cm.steps:
        if isinstance(step, CompactConv2d | CompactLinear):
            kernel = emu_conv if isinstance(step, CompactConv2d) else emu_linear
            on_gpu = step.kernel_forward(h, kernel, step.host_arrays())
            h = step.forward_bl(h)
            _assert_close(on_gpu, h)
        else:
            h = step.forward_bl(h)
    assert cm.compact_layers[1].bias_map is not None
