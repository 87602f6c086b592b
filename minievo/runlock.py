"""One run per folder: an exclusive lock on a run folder for as long as a run uses it.

Two runs pointed at one ``--out`` would otherwise interleave their files (one run's
``config.json`` beside the other's results). A run (``evolve``, ``train``, each lineage of a
sweep) takes an exclusive lock on ``<folder>/.minievo-lock`` before it reads or writes anything
there; ``minievo report`` takes a shared one, so it never reads a folder a run is writing. A
second process is refused at once, in one line naming the holder (its process id, host,
command and start time, which the holder writes into the lock file).

The lock is the kernel's ``flock`` on that file: it goes away with the process that held it,
so a run killed with SIGKILL leaves no lock behind (the file stays, its holder line stale, and
the next run takes it over). A start that wrote no run (refused, say) removes the lock file it
made, and the folder too when it made it and left it empty, so a refused command leaves
nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no locking (said once, in a warning)
    fcntl = None

#: The lock file's name inside a run folder (the run's own files never use it).
LOCK_NAME = ".minievo-lock"


class FolderInUse(Exception):
    """The folder is locked by another process; the message names the holder."""


def _holder_line(kind: str) -> str:
    argv = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
    return (f"pid {os.getpid()} on {socket.gethostname()}, {kind} started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {argv[:300]}")


@contextlib.contextmanager
def run_lock(folder, kind: str, shared: bool = False):
    """Hold the run lock of ``folder`` (created if missing) inside the block.

    Args:
        folder: the run folder.
        kind: what takes it ("evolve", "train", "report"), for the holder line.
        shared: a reader's lock (several readers at once, no writer).

    Raises:
        FolderInUse: another process holds the lock.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        yield  # not a folder: the caller's own check says so
        return
    created = not folder.exists()
    if fcntl is None:
        print("minievo: warning: no file locking on this platform; do not point two runs at "
              "one folder", file=sys.stderr)
        yield
        return
    if created and shared:
        yield  # nothing to read; the reader reports the missing folder itself
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    new_file = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    held = False
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 1000, 0).decode("utf-8", "replace").strip() or "unknown"
            raise FolderInUse(f"{folder} is in use by another minievo process ({holder}); "
                              "wait for it to finish or choose another folder") from None
        held = True
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (_holder_line(kind) + "\n").encode(), 0)
        yield
    finally:
        try:
            # A start that wrote no run leaves nothing behind: no lock file, no new folder.
            if held and new_file and not (folder / "config.json").exists():
                path.unlink(missing_ok=True)
                if created and not any(folder.iterdir()):
                    folder.rmdir()
        except OSError:
            pass
        os.close(fd)  # releases the lock
