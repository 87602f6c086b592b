"""The method lives in the repository: docs/method.md, and every pointer into it resolves.

Docstrings, chapters and the README cite the method as ``docs/method.md#anchor``; each anchor
must exist in docs/method.md (an ``<a id="...">``), and no citation of the old, external
METHOD.md may remain.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHOD = REPO / "docs" / "method.md"
CITING = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
          *sorted((REPO / "minievo").rglob("*.py")),
          *sorted((REPO / "tutorials").glob("*")), *sorted((REPO / "benchmarks").glob("*.py")),
          *sorted((REPO / "tests").rglob("*.py"))]
REFERENCE = re.compile(r"docs/method\.md#([A-Za-z0-9_-]+)")


def anchors() -> set[str]:
    return set(re.findall(r'<a id="([^"]+)"></a>', METHOD.read_text()))


def test_method_page_has_the_sections_the_code_cites():
    have = anchors()
    for name in ("notation", "clusters", "encoding", "normalisation", "synapse-probability",
                 "cluster-probability", "environmental-factor", "sampling", "facts",
                 "generation", "offspring-init", "recorded", "dead-structure", "experiment",
                 "comparisons", "decisions", "presets"):
        assert name in have, f"docs/method.md has no anchor {name!r}"
    text = METHOD.read_text()
    # the corrected fact: at F = 1 the strongest *cluster* survives, not the strongest synapse
    assert "strongest **cluster** of every layer always" in text
    assert "**not** true that the strongest synapse of every layer always" in text
    # internal links of the page resolve too
    for target in re.findall(r"\]\(#([A-Za-z0-9_-]+)\)", text):
        assert target in have, f"docs/method.md links to #{target}, which does not exist"


def test_every_citation_of_the_method_resolves():
    have = anchors()
    cited = 0
    for path in CITING:
        if not path.is_file() or path == Path(__file__):
            continue
        text = path.read_text(errors="replace")
        assert "METHOD.md" not in text, f"{path.relative_to(REPO)} still cites METHOD.md"
        for anchor in REFERENCE.findall(text):
            cited += 1
            assert anchor in have, (f"{path.relative_to(REPO)} cites docs/method.md#{anchor}, "
                                    f"which is not an anchor of docs/method.md")
    assert cited >= 20  # the docstrings and chapters that cite the method point to it


def test_extending_guide_code_runs(tmp_path, monkeypatch):
    """Every Python block of docs/extending.md runs as the guide says: a block opening with
    '# some/file.py' adds to that file, the others run in order in one session (the guide's
    contract-test file is collected by pytest, not run here)."""
    import sys

    text = (REPO / "docs" / "extending.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 10
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace: dict = {"__name__": "extending_guide"}
    ran = 0
    for block in blocks:
        first = block.splitlines()[0]
        match = re.fullmatch(r"# ([\w/]+\.py)", first.strip())
        if match:
            path = tmp_path / match.group(1)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(block + "\n")
            continue
        for name in [m for m in sys.modules if m.startswith("my_")]:
            del sys.modules[name]  # a file the guide extended since the last import
        exec(compile(block, "docs/extending.md", "exec"), namespace)  # noqa: S102
        ran += 1
    assert ran >= 8
