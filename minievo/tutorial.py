"""The set-up every tutorial chapter shares: fast mode, where figures and runs go, saving.

    from minievo import tutorial

    FAST = tutorial.fast_mode()
    FIGURES, RUNS = tutorial.folders(globals().get("__file__"))
    save = tutorial.figure_saver(FIGURES)
"""

from __future__ import annotations

import os
from pathlib import Path


def fast_mode() -> bool:
    """True under ``MINIEVO_FAST=1``: tiny data and few steps, for tests and a first look."""
    return os.environ.get("MINIEVO_FAST") == "1"


def folders(chapter_file: str | None) -> tuple[Path, Path]:
    """``(figures, runs)`` folders of a chapter; the figures folder is created.

    Both sit beside the chapter file (a notebook, which has no ``__file__``, uses its working
    folder) unless ``MINIEVO_FIGURES`` or ``MINIEVO_TUTORIAL_RUNS`` name others. ``runs`` keeps
    trained networks that later chapters reuse.
    """
    here = Path(chapter_file).resolve().parent if chapter_file else Path.cwd()
    figures = Path(os.environ.get("MINIEVO_FIGURES", here / "figures"))
    figures.mkdir(parents=True, exist_ok=True)
    runs = Path(os.environ.get("MINIEVO_TUTORIAL_RUNS", here / "runs"))
    return figures, runs


def figure_saver(figures: Path):
    """A ``save(fig, name)`` that writes into ``figures``.

    As a script (the Agg backend) it says where the file went and closes the figure, which
    nobody can look at. In a notebook it stays silent and returns nothing, so a cell that ends
    with ``save(fig, ...)`` shows the figure and nothing else.
    """

    def save(fig, name: str) -> None:
        import matplotlib
        import matplotlib.pyplot as plt

        path = Path(figures) / name
        fig.savefig(path, dpi=110, bbox_inches="tight")
        if matplotlib.get_backend().lower() == "agg":
            print(f"figure: {path}")
            plt.close(fig)

    return save
