"""Keep glibc from handing the training loop's buffers back to the OS after every step.

A training step allocates and frees the same large temporaries every time (im2col matrices,
patch gradients: ~4-8 MB each for LeNet-5 at batch 64). glibc serves big requests with mmap,
or trims the top of its heap once more than M_TRIM_THRESHOLD bytes are free there (a value
that adapts to history), so each step can return those pages to the kernel and fault them
back in, zero-filled, on the next step. Measured here (LeNet-5, batch 64, 2 BLAS threads,
GNU time -v over 310 steps): 599k minor page faults and 20.0 ms/step with glibc's defaults,
21k faults and 15.6 ms/step with the two settings below. Without them the step time was also
bimodal from run to run (16.6 or 23.3 ms), as the adaptive threshold settled one way or the
other.

The cost: freed memory stays in the process (RSS does not shrink after a peak), and the setting
holds for the whole process. So it is applied only by :func:`minievo.accel.enable`, never on
import, and cannot be undone. Set ``MINIEVO_MALLOPT=0`` to leave glibc's defaults alone.
Nothing happens on other C libraries.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# Requests below this come from the heap (reused), not from fresh mmap'ed pages.
MMAP_THRESHOLD = 256 * 2**20
# Free memory at the top of the heap is returned to the OS only beyond this.
TRIM_THRESHOLD = 512 * 2**20

_applied: bool | None = None


def tune_glibc_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True if they were set."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("MINIEVO_MALLOPT", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    _applied = ok
    return ok
