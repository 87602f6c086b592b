"""MkDocs hooks of minievo's documentation site (``hooks:`` in mkdocs.yml).

``mkdocs build`` (or ``mkdocs serve``) calls :func:`on_files`, which adds to the site what is
not a page in ``docs/``:

* the eight tutorial chapters, each converted from its jupytext script into a notebook and
  executed in a fresh kernel (nbclient) with ``MINIEVO_FAST=1``, then written out as a
  Markdown page with its code, its printed output and its figures (``chapters/NN_name.md``
  and ``chapters/NN_name/figure-*.png``); nothing is written into the checkout;
* the figures of the committed runs in ``benchmarks/results/`` that a page shows
  (``results/<run>/...png``);
* MathJax 3, copied from the ``django-static-mathjax`` package of the ``docs`` extra, so that
  the site renders its equations without any request outside itself.

The chapters run two at a time (``MINIEVO_DOCS_JOBS`` sets how many), each in its own kernel
process with one BLAS thread. Run as a script, the module executes the chapters alone and
prints their times::

    python docs/hooks.py [--out DIR]     # DIR: write the pages and figures there too

The executed notebooks are kept in memory for the life of the process (``mkdocs serve``
re-executes a chapter only when its source, or minievo's, changes).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TUTORIALS = REPO / "tutorials"
RESULTS = REPO / "benchmarks" / "results"

log = logging.getLogger("mkdocs.hooks.minievo")

#: MathJax files the site needs: the TeX-to-CommonHTML bundle, its fonts and the components it
#: loads on demand (TeX extensions through autoload, the menu, assistive MathML).
MATHJAX_PARTS = ("tex-chtml.js", "output/chtml/fonts/woff-v2/", "input/tex/extensions/",
                 "a11y/assistive-mml.js", "a11y/semantic-enrich.js", "a11y/complexity.js",
                 "a11y/explorer.js", "ui/")

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_METHOD_LINK = re.compile(r"(?<![`\[/])docs/method\.md#([A-Za-z0-9_-]+)")
_executed: dict[str, tuple[object, float]] = {}


def chapters() -> list[Path]:
    """The chapter scripts, in order: ``tutorials/NN_*.py``."""
    return sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))


def _source_key(chapter: Path) -> str:
    """A hash of the chapter and of every Python file it can import from the checkout."""
    digest = hashlib.sha256(chapter.read_bytes())
    for package in ("minievo", "data_loaders"):
        for path in sorted((REPO / package).rglob("*")):
            if path.suffix in {".py", ".c", ".cu", ".h"}:
                digest.update(str(path.relative_to(REPO)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def execute_chapter(chapter: Path, timeout: int = 600):
    """Run one chapter as a notebook in fast mode.

    Args:
        chapter: a ``tutorials/NN_name.py`` script in jupytext's percent format.
        timeout: seconds one cell may take before the build fails.

    Returns:
        ``(notebook, seconds)``: the executed ``nbformat`` notebook, with its outputs, and the
        wall time of its execution.

    Raises:
        RuntimeError: the ``docs`` extra is not installed, or a cell failed (the message names
            the chapter).
    """
    key = _source_key(chapter)
    if key in _executed:
        return _executed[key]
    try:
        import jupytext
        import nbclient
        import nbformat
    except ImportError as exc:
        raise RuntimeError(f"executing the chapters needs {exc.name}: "
                           "pip install -e '.[docs]'") from exc
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIEVO_")}
    env.pop("MPLBACKEND", None)  # the kernel's inline backend: figures become cell outputs
    with tempfile.TemporaryDirectory(prefix="minievo-docs-") as tmp:
        env.update(MINIEVO_FAST="1", MINIEVO_FIGURES=str(Path(tmp) / "figures"),
                   MINIEVO_TUTORIAL_RUNS=str(Path(tmp) / "runs"),
                   # one BLAS thread: on a shared machine several can be far slower
                   OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH"))
                                              if p))
        notebook = nbformat.from_dict(jupytext.read(chapter))
        client = nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                         resources={"metadata": {"path": tmp}})
        start = time.perf_counter()
        try:
            client.execute(env=env)
        except nbclient.exceptions.CellExecutionError as exc:
            raise RuntimeError(f"{chapter.name} failed in fast mode: {str(exc)[-2000:]}") from exc
        seconds = time.perf_counter() - start
    _executed[key] = (notebook, seconds)
    return notebook, seconds


def _fence(text: str, language: str) -> str:
    """``text`` as a fenced block whose fence is longer than any backtick run inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text.rstrip()}\n{fence}"


def _printed(text: str) -> str:
    """What a terminal would show of ``text``: no colour codes, a ``\\r`` redraw keeps only
    its last state."""
    lines = []
    for line in _ANSI.sub("", text).split("\n"):
        lines.append(line.rstrip("\r").split("\r")[-1])
    return "\n".join(lines)


def _markdown_cell(source: str) -> str:
    """A chapter's Markdown cell with its citations of the method page made links."""
    return _METHOD_LINK.sub(lambda m: f"[docs/method.md#{m.group(1)}](../method.md#{m.group(1)})",
                            source)


def chapter_page(notebook, stem: str, seconds: float) -> tuple[str, dict[str, bytes]]:
    """The Markdown page of an executed chapter and its figures.

    Args:
        notebook: the executed notebook of ``tutorials/<stem>.py``.
        stem: the chapter's file name without ``.py``; the figures are named
            ``<stem>/figure-<k>.png``, relative to the page.
        seconds: the execution's wall time, stated at the top of the page.

    Returns:
        ``(markdown, figures)``: the page, and the PNG bytes of each figure by its path
        relative to the page's folder.
    """
    import base64

    figures: dict[str, bytes] = {}
    parts: list[str] = []
    note = (f'!!! note "Executed in fast mode"\n'
            f"    This page is `tutorials/{stem}.py`, run as a notebook when the site was built, "
            f"with `MINIEVO_FAST=1`: generated `synthetic-digits` data, a few hundred training "
            f"steps and small timing loops, so its numbers show the machinery, not the method "
            f"(execution took {seconds:.0f} s). Run the chapter yourself at full size with "
            f"`python tutorials/{stem}.py`; [the chapters](index.md) says how long each takes.")
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "markdown":
            parts.append(_markdown_cell(cell.source))
            if index == 0:
                parts.append(note)
            continue
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        parts.append(_fence(cell.source, "python"))
        printed: list[str] = []
        for output in cell.outputs:
            kind = output.get("output_type")
            if kind == "stream":
                printed.append(_printed(output.get("text", "")))
                continue
            data = output.get("data", {})
            if "image/png" in data:
                if printed:
                    parts.append(_fence("".join(printed), "text"))
                    printed = []
                name = f"{stem}/figure-{len(figures) + 1}.png"
                figures[name] = base64.b64decode(data["image/png"])
                parts.append(f"![figure {len(figures)} of {stem}]({name})")
            elif "text/plain" in data:
                printed.append(_printed(str(data["text/plain"])) + "\n")
        if any(p.strip() for p in printed):
            parts.append(_fence("".join(printed), "text"))
    return "\n\n".join(parts) + "\n", figures


def mathjax_dir() -> Path:
    """The ``es5`` folder of the installed MathJax 3 (the ``django-static-mathjax`` package)."""
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the site bundles MathJax from the django-static-mathjax package: "
                           "pip install -e '.[docs]'")
    es5 = Path(list(spec.submodule_search_locations)[0]) / "static" / "mathjax" / "es5"
    if not (es5 / "tex-chtml.js").is_file():
        raise RuntimeError(f"{es5} holds no tex-chtml.js: reinstall django-static-mathjax")
    return es5


def _mathjax_files(es5: Path):
    """``(uri, path)`` of each MathJax file the site serves, under ``assets/mathjax/``."""
    for part in MATHJAX_PARTS:
        paths = sorted((es5 / part).rglob("*.js*") if part.endswith("/") else [es5 / part])
        paths += sorted((es5 / part).glob("*.woff")) if part.endswith("/") else []
        for path in paths:
            if path.is_file():
                yield "assets/mathjax/" + path.relative_to(es5).as_posix(), path
    yield "assets/mathjax/LICENSE", es5.parent / "LICENSE"


def build_chapters(out: Path | None = None) -> dict[str, tuple[str, dict[str, bytes], float]]:
    """Execute every chapter and convert it: ``{stem: (markdown, figures, seconds)}``.

    Args:
        out: if given, the pages and figures are also written there (``out/<stem>.md``).
    """
    from concurrent.futures import ThreadPoolExecutor

    value = os.environ.get("MINIEVO_DOCS_JOBS", str(min(2, os.cpu_count() or 1)))
    if not value.isdigit() or int(value) < 1:
        raise RuntimeError(f"MINIEVO_DOCS_JOBS must be an integer >= 1, got {value!r}")
    jobs = int(value)
    pages = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:  # each chapter runs in its own kernel
        executed = list(pool.map(execute_chapter, chapters()))
    for chapter, (notebook, seconds) in zip(chapters(), executed):
        markdown, figures = chapter_page(notebook, chapter.stem, seconds)
        pages[chapter.stem] = (markdown, figures, seconds)
        log.info("chapter %s executed in fast mode in %.1f s", chapter.stem, seconds)
        if out is not None:
            (out / chapter.stem).mkdir(parents=True, exist_ok=True)
            (out / f"{chapter.stem}.md").write_text(markdown)
            for name, data in figures.items():
                (out / name).write_bytes(data)
    return pages


# ----- the MkDocs events -------------------------------------------------------------------------
def on_files(files, config):
    """Add the executed chapters, the committed runs' figures and MathJax to the site."""
    from mkdocs.exceptions import PluginError
    from mkdocs.structure.files import File

    try:
        es5 = mathjax_dir()
        start = time.perf_counter()
        pages = build_chapters()
    except RuntimeError as exc:
        raise PluginError(str(exc)) from exc
    log.info("the eight chapters executed in %.1f s (wall, with the kernels' start-up)",
             time.perf_counter() - start)
    for stem, (markdown, figures, _) in pages.items():
        files.append(File.generated(config, f"chapters/{stem}.md", content=markdown))
        for name, data in figures.items():
            files.append(File.generated(config, f"chapters/{name}", content=data))
    pages_text = "\n".join(p.read_text() for p in Path(config["docs_dir"]).rglob("*.md"))
    for path in sorted(RESULTS.rglob("*.png")):
        relative = path.relative_to(RESULTS).as_posix()
        if relative in pages_text:  # only the figures a page shows
            files.append(File.generated(config, "results/" + relative, abs_src_path=str(path)))
    for uri, path in _mathjax_files(es5):
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


_INCLUDE = re.compile(r"^<!-- include (benchmarks/results/[\w./-]+\.md) -->$", re.M)


def _included(match: re.Match) -> str:
    """The committed report a page names, its headings moved two levels down."""
    path = REPO / match.group(1)
    if not path.is_file() or RESULTS not in path.resolve().parents:
        raise ValueError(f"a page includes {match.group(1)}, which is not a committed report")
    return re.sub(r"^(#+) ", r"\1## ", path.read_text(), flags=re.M).strip()


def _gpu_runs() -> str:
    """The summaries of the GPU checks committed under benchmarks/results/gpu/, if any."""
    summaries = sorted((RESULTS / "gpu").glob("*/summary.md"))
    if not summaries:
        return ("No run of the GPU check is committed yet (`benchmarks/results/gpu/` holds "
                "none), so there are no GPU figures to show.")
    blocks = []
    for summary in summaries:
        body = re.sub(r"^(#+) ", r"\1## ", summary.read_text(), flags=re.M)
        blocks.append(f"### The run of {summary.parent.name}\n\n"
                      f"From `benchmarks/results/gpu/{summary.parent.name}/summary.md`.\n\n"
                      + body)
    return "\n\n".join(blocks)


def on_page_markdown(markdown, page, config, files):
    """Fill in what a page takes from the committed results.

    ``<!-- include benchmarks/results/RUN/FILE.md -->`` on a line of its own becomes that
    report (a run's ``table.md``, a sweep's ``aggregate.md``), so a page shows the committed
    numbers themselves; ``<!-- gpu-runs -->`` becomes the GPU checks' summaries.
    """
    from mkdocs.exceptions import PluginError

    try:
        markdown = _INCLUDE.sub(_included, markdown)
    except ValueError as exc:
        raise PluginError(f"{page.file.src_uri}: {exc}") from exc
    return markdown.replace("<!-- gpu-runs -->", _gpu_runs())


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Execute the chapters as the site build does.")
    parser.add_argument("--out", type=Path, help="also write the pages and figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    began = time.perf_counter()
    build_chapters(args.out)
    print(f"eight chapters in {time.perf_counter() - began:.1f} s")
