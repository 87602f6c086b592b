"""The protocol of issue 10: the test set only reports, and always with its size."""

from __future__ import annotations

import json

import pytest

from minievo import cli


@pytest.mark.parametrize("flag, value", [("--limit-test", "0"), ("--limit-test", "-5"),
                                         ("--limit-train", "0")])
def test_limits_below_one_are_refused(tmp_path, capsys, flag, value):
    code = cli.main(["evolve", "--dataset", "synthetic-digits", flag, value, "--out",
                     str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "minievo" in err and "error" in err
    assert flag.lstrip("-").replace("-", "_") in err.replace("-", "_")
    assert not (tmp_path / "run").exists()


def test_evolve_states_the_size_of_the_test_and_validation_sets(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["evolve", "--dataset", "synthetic-digits", "--generations", "1",
                     "--ancestor-epochs", "1", "--offspring-epochs", "1", "--limit-train", "160",
                     "--limit-test", "120", "--val-fraction", "0.25", "--no-progress",
                     "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "on 120 test images; validation" in printed and "on 40 images" in printed
    rows = json.loads((out / "table.json").read_text())
    assert {(r["test_images"], r["val_images"]) for r in rows} == {(120, 40)}
