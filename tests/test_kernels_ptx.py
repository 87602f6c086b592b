"""Every CUDA source compiles to PTX, without a GPU (NVRTC through CuPy's binding, or nvcc)."""

from __future__ import annotations

import re

import pytest

from minievo import kernels

CU_FILES = kernels.kernel_files()
COMPILERS = kernels.ptx_compilers()


def test_kernel_sources_are_shipped():
    names = [p.name for p in CU_FILES]
    assert "sparse_conv2d.cu" in names and "sparse_linear.cu" in names
    assert (kernels.KERNEL_DIR / "cuda_emu.h").is_file()


def test_a_ptx_compiler_is_available():
    # CI installs nvidia-cuda-nvrtc-cu12 + cupy (the `test` extra), so this must not skip.
    assert COMPILERS, (
        "no CUDA compiler: pip install nvidia-cuda-nvrtc-cu12 cupy-cuda12x, or put nvcc on PATH"
    )


@pytest.mark.parametrize("compiler", COMPILERS or ["none"])
@pytest.mark.parametrize("path", CU_FILES, ids=[p.name for p in CU_FILES])
def test_cu_compiles_to_ptx(path, compiler):
    assert compiler != "none", "no PTX compiler available"
    source = path.read_text()
    names = kernels.entry_points(source)
    assert names, f"{path.name} defines no extern \"C\" __global__ kernel"
    ptx = kernels.compile_to_ptx(path, compiler=compiler)
    assert ".version" in ptx and ".target" in ptx
    for name in names:
        assert re.search(rf"\.entry\s+{name}\s*\(", ptx), f"{name} missing from the PTX"
    if "__syncthreads()" in source:
        assert "bar.sync" in ptx or "barrier.sync" in ptx
    if "__shared__" in source:
        assert ".shared" in ptx


def test_a_kernel_uses_shared_memory_and_barriers():
    sources = [p.read_text() for p in CU_FILES]
    assert any("__shared__" in s and "__syncthreads()" in s for s in sources)


def test_compile_error_carries_the_log(tmp_path):
    bad = tmp_path / "bad.cu"
    bad.write_text('extern "C" __global__ void broken(float* x) { x[0] = undefined_name; }\n')
    with pytest.raises(kernels.KernelCompileError, match="undefined_name"):
        kernels.compile_to_ptx(bad)


def test_unknown_source_lists_the_available_ones():
    with pytest.raises(FileNotFoundError, match="sparse_linear.cu"):
        kernels.kernel_path("nope.cu")


def test_signature_parsing():
    src = kernels.read_source("sparse_linear.cu")
    assert kernels.entry_points(src) == ["csr_linear_forward"]
    params = kernels.kernel_signature(src, "csr_linear_forward")
    assert [p.name for p in params[:6]] == ["x", "indptr", "indices", "values", "bias", "y"]
    assert params[0].pointer and params[0].const and params[0].dtype == "float32"
    assert params[5].pointer and not params[5].const
    assert not params[6].pointer and params[6].dtype == "int32"
    with pytest.raises(ValueError, match="no kernel named"):
        kernels.kernel_signature(src, "missing")
    with pytest.raises(ValueError, match="unsupported parameter type"):
        kernels.kernel_signature('extern "C" __global__ void k(float2* x) {}', "k")


def test_commented_out_kernels_are_not_entry_points():
    src = '// extern "C" __global__ void old(int n) {}\nextern "C" __global__ void k(int n) {}'
    assert kernels.entry_points(src) == ["k"]
