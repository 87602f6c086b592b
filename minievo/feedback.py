"""Checks that explain themselves: what the assignment task tests report when they fail.

A task test describes its case in words and checks through a :class:`Check`; a failing check
raises :class:`TaskFailure`, whose message the grader (``minievo assignments grade``) prints
under the task::

    case: N=1, C=2, H=7, W=6, 3x3 kernel, stride 2, padding 1
    expected: (OH, OW) = (4, 3)
    got: (OH, OW) = (5, 4)
    hint: OH = (H + 2 padding - kh) // stride + 1. reread chapter 4, section "2. im2col..."

    chk = Check("4.1", "N=1, C=2, H=7, W=6, 3x3 kernel, stride 2, padding 1")
    cols, hw = chk.call(im2col, x, 3, 3, 2, 1)
    chk.equal(hw, (4, 3), "(OH, OW)", hint="OH = (H + 2 padding - kh) // stride + 1.")

An exception raised by the code under test (other than NotImplementedError, which the grader
reports as "not implemented") becomes a TaskFailure too, with the case and the hint.
"""

from __future__ import annotations

import numpy as np


class TaskFailure(AssertionError):
    """A task test failed; the message gives the case, expected, got and a hint that names the
    chapter section to reread."""

    def __init__(self, task: str, case: str, expected: str, got: str, hint: str = ""):
        from minievo.assignments import get_task

        self.task, self.case, self.expected, self.got = task, case, expected, got
        self.hint = (hint.strip() + " " if hint else "") + f"Reread {get_task(task).reread}."
        super().__init__(f"case: {case}\nexpected: {expected}\ngot: {got}\nhint: {self.hint}")


#: The most characters of an exception's message a failure shows.
MAX_MESSAGE = 8000


def exception_text(exc: BaseException, limit: int = MAX_MESSAGE) -> str:
    """An exception's message, all of its lines, cut at ``limit`` characters (with a note)."""
    text = str(exc).strip()
    if len(text) > limit:
        text = text[:limit] + f"\n... ({len(text) - limit} more characters)"
    return text


def describe(a, values: int = 4) -> str:
    """A short description of a result: ``None``, a number, or an array's shape, dtype and first
    values."""
    if a is None:
        return "None"
    if isinstance(a, tuple | list) and not all(isinstance(v, int | float) for v in a):
        return "(" + ", ".join(describe(v, values) for v in a) + ")"
    try:
        arr = np.asarray(a.get() if hasattr(a, "get") else a)
    except Exception:  # noqa: BLE001 - anything that is not array-like
        return f"{type(a).__name__} {a!r}"[:200]
    if arr.ndim == 0:
        return f"{arr.item()!r}"
    flat = arr.reshape(-1)[:values]
    more = ", ..." if arr.size > values else ""
    shown = ", ".join(f"{v:.4g}" if isinstance(v, float | np.floating) else str(v)
                      for v in flat.tolist())
    return f"array of shape {arr.shape}, {arr.dtype}: [{shown}{more}]"


class Check:
    """The checks of one case of one task; every failure names the case."""

    def __init__(self, task: str, case: str):
        self.task, self.case = task, case

    def fail(self, expected: str, got: str, hint: str = ""):
        raise TaskFailure(self.task, self.case, expected, got, hint)

    def call(self, fn, *args, hint: str = "", **kwargs):
        """``fn(*args, **kwargs)``; an exception of the code under test becomes a failure.

        The failure shows the exception's whole message (up to :data:`MAX_MESSAGE`
        characters): a compile log, a sanitizer report or a barrier message spans many lines.
        """
        try:
            return fn(*args, **kwargs)
        except (NotImplementedError, TaskFailure):
            raise
        except Exception as exc:  # noqa: BLE001 - reported, with the case
            self.fail(f"{getattr(fn, '__name__', 'the call')} to return a result",
                      f"{type(exc).__name__}: {exception_text(exc)}", hint)

    def true(self, condition, expected: str, got: str, hint: str = "") -> None:
        if not bool(condition):
            self.fail(expected, got, hint)

    def equal(self, got, want, what: str, hint: str = "") -> None:
        """``got == want`` for plain values (shapes, ints, dtypes, None)."""
        if got != want:
            self.fail(f"{what} = {want!r}", f"{what} = {got!r}", hint)

    def none(self, got, what: str, hint: str = "") -> None:
        if got is not None:
            self.fail(f"{what} = None", f"{what} = {describe(got)}", hint)

    def shape(self, got, shape, what: str, hint: str = ""):
        """``got`` is an array of ``shape``; returns it as a NumPy array."""
        if got is None or not hasattr(got, "shape"):
            self.fail(f"{what}: an array of shape {tuple(shape)}", f"{what} = {describe(got)}",
                      hint)
        arr = np.asarray(got.get() if hasattr(got, "get") else got)
        if arr.shape != tuple(shape):
            self.fail(f"{what} of shape {tuple(shape)}", f"{what} of shape {arr.shape}", hint)
        return arr

    def close(self, got, want, what: str, hint: str = "", rtol: float = 1e-7,
              atol: float = 1e-9) -> None:
        """``got`` has ``want``'s shape and values (within rtol/atol); a failure shows the
        worst entry."""
        want = np.asarray(want)
        arr = self.shape(got, want.shape, what, hint)
        if arr.dtype == bool or want.dtype == bool:
            arr, want = arr.astype(np.int64), want.astype(np.int64)
        diff = np.abs(arr.astype(np.float64) - want.astype(np.float64))
        bad = ~(diff <= atol + rtol * np.abs(want.astype(np.float64)))
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0]) if want.ndim else ()
            self.fail(
                f"{what} = {describe(want)}; at {where}: {want[where].item():.6g}",
                f"{what} = {describe(arr)}; at {where}: {arr[where].item():.6g} "
                f"({int(bad.sum())} of {bad.size} entries wrong)",
                hint,
            )


def numerical_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar function ``f`` at ``x`` (float64), one entry at a
    time: the independent check of a backward pass."""
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + eps
        up = f(x)
        x[idx] = old - eps
        down = f(x)
        x[idx] = old
        g[idx] = (up - down) / (2 * eps)
    return g


__all__ = ["Check", "MAX_MESSAGE", "TaskFailure", "describe", "exception_text",
           "numerical_grad"]
