"""Every tutorial chapter runs as an executed notebook in fast mode (MINIEVO_FAST=1) and draws.

Each chapter is converted as a student would (jupytext -> nbformat) and executed cell by cell
in a fresh IPython kernel (nbclient), in a temporary working directory, with its figures
redirected there: nothing is written into the checkout. Fast mode uses the generated
synthetic digits, so no network and no MNIST cache are needed. Chapter 8 also runs as a
script, reading a finished run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from minievo.kernels.emulate import gpp_path

REPO = Path(__file__).resolve().parents[1]
TUTORIALS = REPO / "tutorials"
CHAPTERS = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))

#: The figures each chapter must write (a chapter may write more, e.g. on a GPU).
FIGURES = {
    "01": ["01_broadcasting.png", "01_vectorisation.png", "01_matmul_gflops.png"],
    "02": ["02_gradient_check.png", "02_graph.png"],
    "03": ["03_samples.png", "03_optimisers.png", "03_training.png", "03_first_layer.png"],
    "04": ["04_filters.png", "04_im2col.png", "04_conv_timing.png", "04_lenet5_budget.png",
           "04_feature_maps.png"],
    "05": ["05_synapse_probability.png", "05_cluster_probability.png",
           "05_expected_retention.png", "05_offspring_masks.png"],
    "06": ["06_accuracy_vs_synapses.png", "06_efficiency.png", "06_layer_density.png",
           "06_kernel_masks.png"],
    "07": ["07_kernel_csr.png", "07_cpu_speed.png", "07_emulator.png"],
    "08": ["08_accuracy_vs_synapses.png", "08_efficiency.png", "08_comparison.png"],
}

EXPECTED_NAMES = ["01_arrays_and_backends", "02_autodiff_from_scratch",
                  "03_layers_losses_optimisers", "04_convolution_and_lenet5",
                  "05_genetic_encoding", "06_evolutionary_synthesis",
                  "07_cluster_sparse_inference", "08_reproducing_the_paper"]


def test_the_eight_chapters_are_there():
    assert [p.stem for p in CHAPTERS] == EXPECTED_NAMES
    readme = (TUTORIALS / "README.md").read_text()
    for p in CHAPTERS:
        assert p.name in readme, f"tutorials/README.md does not list {p.name}"
    assert "jupytext --to notebook tutorials/*.py" in readme


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.stem[:2] for p in CHAPTERS])
def test_chapter_is_a_jupytext_percent_script(chapter):
    text = chapter.read_text()
    assert "format_name: percent" in text.split("# ---", 2)[1]
    markdown = re.findall(r"^# %% \[markdown\]$", text, re.M)
    code = re.findall(r"^# %%$", text, re.M)
    assert len(markdown) >= 5 and len(code) >= 5, "a chapter explains as it goes"
    assert "## Exercises" in text
    if chapter.stem[:2] in {"02", "03", "04", "05", "06", "07"}:
        assert re.search(r"\*\*Task \d\.\d\*\*", text), "exercises point to assignment tasks"
    compile(text, str(chapter), "exec")


def test_chapters_convert_to_notebooks():
    jupytext = pytest.importorskip("jupytext")  # the `tutorials` extra
    for chapter in CHAPTERS:
        nb = jupytext.read(chapter)
        kinds = {cell.cell_type for cell in nb.cells}
        assert kinds == {"markdown", "code"}, chapter.name
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# Chapter")


def chapter_env() -> dict:
    """The environment of a chapter run: none of the caller's MINIEVO_ settings, except the test
    session's own cache of the native kernel (tests/conftest.py), so the user's is not used."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIEVO_")}
    env["MINIEVO_NATIVE_CACHE"] = os.environ["MINIEVO_NATIVE_CACHE"]
    return env


def _execute_notebook(chapter: Path, cwd: Path, env: dict):
    """The chapter as a notebook (jupytext), executed in a fresh kernel (nbclient)."""
    try:
        import jupytext
        import nbclient
        import nbformat
    except ImportError as exc:  # the test extra installs all three, and ipykernel
        pytest.fail(f"executing the chapters as notebooks needs {exc.name}: "
                    "pip install -e '.[test]'")
    nb = nbformat.from_dict(jupytext.read(chapter))
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute(env=env)
    return nb


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.stem[:2] for p in CHAPTERS])
def test_chapter_runs_as_a_notebook_in_fast_mode_and_draws(chapter, tmp_path):
    figures = tmp_path / "figures"
    env = chapter_env()
    env.pop("MPLBACKEND", None)  # the kernel's inline backend: figures become cell outputs
    env.update(MINIEVO_FAST="1", MINIEVO_FIGURES=str(figures),
               MINIEVO_TUTORIAL_RUNS=str(tmp_path / "runs"),
               # A multi-threaded BLAS on a busy shared machine can be 10x slower than one
               # thread (its threads wait for each other); the chapters are small.
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    nb = _execute_notebook(chapter, tmp_path, env)
    written = sorted(p.name for p in figures.glob("*.png"))
    expected = list(FIGURES[chapter.stem[:2]])
    if chapter.stem.startswith("07") and gpp_path() is None:
        expected.remove("07_emulator.png")  # the chapter says why: the emulator needs g++
    missing = [name for name in expected if name not in written]
    assert not missing, f"{chapter.name} did not write {missing} (wrote {written})"
    for name in written:
        assert (figures / name).stat().st_size > 5000, f"{name} looks empty"
    assert not list(tmp_path.glob("runs/**/*.npz")), "fast mode keeps no trained networks"
    # Every cell that saves a figure shows it inline, and no cell prints a figure's path.
    shown = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                       for o in cell.outputs)
        assert "PosixPath" not in text and "figure: " not in text, cell.source[-300:]
        if re.search(r"^\s*save\(fig, ", cell.source, re.M):
            images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
            assert images, f"{chapter.name}: a figure cell shows no figure:\n{cell.source}"
            shown += len(images)
    assert shown >= len(expected), f"{chapter.name}: {shown} figures shown, {len(expected)} saved"


def test_chapter_8_reads_a_finished_run(tmp_path):
    from minievo.evolution.lineage import EvolutionConfig, Lineage

    run = tmp_path / "run"
    cfg = EvolutionConfig(dataset="synthetic-digits", limit_train=256, limit_test=128,
                          generations=1, ancestor_epochs=1, offspring_epochs=1)
    Lineage(cfg, run, progress=False, log=lambda *args: None).run()
    env = chapter_env()
    env.update(MINIEVO_FAST="1", MPLBACKEND="Agg", MINIEVO_FIGURES=str(tmp_path / "figures"),
               MINIEVO_RUN=str(run), OPENBLAS_NUM_THREADS="1")
    chapter = TUTORIALS / "08_reproducing_the_paper.py"
    proc = subprocess.run([sys.executable, str(chapter)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert f"read 2 generations from {run}" in proc.stdout
    assert "running a small lineage" not in proc.stdout
    assert (tmp_path / "figures" / "08_comparison.png").is_file()
