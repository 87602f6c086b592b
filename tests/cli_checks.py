"""Shared checks of the hardening tests: run ``minievo`` in-process and insist that a refusal is
one line naming what is wrong (no traceback)."""

from __future__ import annotations

import pytest

from minievo import backend
from minievo.cli import main


@pytest.fixture(autouse=True)
def own_settings(monkeypatch):
    """main() sets the sparse training mode and may set MINIEVO_STRICT_NUMERICS: undo both.
    Imported into a test module, it applies to every test there."""
    from minievo.accel import sparse_train

    monkeypatch.delenv("MINIEVO_STRICT_NUMERICS", raising=False)
    mode = sparse_train.get_mode()
    yield
    sparse_train.set_mode(mode)


def run_main(capsys, *args) -> tuple[int, str, str]:
    """``minievo ARGS`` on the NumPy backend: (exit status, stdout, stderr)."""
    with backend.using_backend("numpy"):
        status = main([str(a) for a in args])
    out = capsys.readouterr()
    return status, out.out, out.err


def one_line_error(status: int, err: str, *needles: str) -> str:
    """Exit status 2 and one ``minievo: error:`` line holding every needle; returns it."""
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("minievo: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]


def one_line(exc_info, *needles: str) -> str:
    """An exception whose message is one line holding every needle; returns it."""
    message = str(exc_info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message
