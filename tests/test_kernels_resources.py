"""ptxas resource check of every shipped kernel, per real architecture, without a GPU.

The CPU emulator cannot see resource limits: a kernel with 64 KB of static shared memory
compiles to PTX and runs in the emulator, but no GPU launches it. ptxas (the assembler from
PTX to a GPU's machine code) can: it reports registers, shared memory and spills per kernel
and architecture. CI (MINIEVO_REQUIRE_SANITIZERS=1) fails here when ptxas is missing.
"""

from __future__ import annotations

import os

import pytest

from minievo import kernels

REQUIRE_TOOLS = os.environ.get("MINIEVO_REQUIRE_SANITIZERS") == "1"
HAVE_TOOLS = kernels.ptxas_path() is not None and bool(kernels.ptx_compilers())


@pytest.fixture
def ptxas():
    """Skip without ptxas (or a PTX compiler) here; fail under MINIEVO_REQUIRE_SANITIZERS=1."""
    if not HAVE_TOOLS:
        message = "ptxas and a PTX compiler (NVRTC or nvcc) are needed for the resource check"
        if REQUIRE_TOOLS:
            pytest.fail(f"{message}, and MINIEVO_REQUIRE_SANITIZERS=1 requires it")
        pytest.skip(message)
    return kernels.ptxas_path()


CU_FILES = kernels.kernel_files()


@pytest.mark.parametrize("path", CU_FILES, ids=[p.name for p in CU_FILES])
def test_shipped_kernels_fit_every_architecture(ptxas, path):
    assert kernels.resource_problems(path) == []
    names = kernels.entry_points(path.read_text())
    for arch in ("sm_75", "sm_90"):
        figures, errors = kernels.kernel_resources(path, arch)
        assert errors == ""
        assert sorted(f.kernel for f in figures) == sorted(names)
        for f in figures:
            assert f.arch == arch and 0 < f.registers <= 255
            assert 0 < f.shared_bytes <= kernels.MAX_STATIC_SHARED


def test_shared_memory_of_the_kernels_is_what_their_tiles_say(ptxas):
    """The figures are read right: the conv kernel stages 2048 floats and 256 ints, the linear
    one 512 floats and 512 ints."""
    conv, _ = kernels.kernel_resources("sparse_conv2d.cu", "sm_80")
    linear, _ = kernels.kernel_resources("sparse_linear.cu", "sm_80")
    assert conv[0].shared_bytes == 2048 * 4 + 256 * 4
    assert linear[0].shared_bytes == 512 * 4 + 512 * 4


BIG_SHARED = r"""
extern "C" __global__ void big_tile(float* x) {
    __shared__ float s[16384];  // 64 KB: fine for PTX and the emulator, too much for a GPU
    const int t = (int)threadIdx.x;
    s[t] = x[t];
    __syncthreads();
    x[t] = s[16383 - t];
}
"""

FITS_SHARED = BIG_SHARED.replace("16384", "10240").replace("16383", "10239")  # 40 KB


def test_oversized_shared_memory_is_caught(ptxas, tmp_path):
    big = tmp_path / "big.cu"
    big.write_text(BIG_SHARED)
    problems = kernels.resource_problems(big, archs=("sm_80",))
    assert any("big_tile on sm_80: 65536 bytes of static shared memory" in p for p in problems)
    assert any("too much shared data" in p for p in problems)  # ptxas itself refuses it
    fits = tmp_path / "fits.cu"
    fits.write_text(FITS_SHARED)
    assert kernels.resource_problems(fits, archs=("sm_80",)) == []


def test_register_spills_are_caught(ptxas):
    """Squeezed into 16 registers (the conv kernel needs about 32) ptxas spills to local
    memory, and the check says so."""
    problems = kernels.resource_problems("sparse_conv2d.cu", archs=("sm_80",),
                                         extra_options=("--maxrregcount=16",))
    assert len(problems) == 1 and "registers spill" in problems[0]
