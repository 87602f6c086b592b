"""One run per folder: two runs on one --out can no longer both proceed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from minievo.runlock import LOCK_NAME, FolderInUse, run_lock

EVOLVE = ["evolve", "--dataset", "synthetic-digits", "--generations", "1", "--ancestor-epochs",
          "1", "--offspring-epochs", "1", "--limit-train", "256", "--limit-test", "100",
          "--no-progress"]


def start(*args):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", MPLBACKEND="Agg")
    return subprocess.Popen([sys.executable, "-m", "minievo.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    folder = tmp_path / "run"
    with run_lock(folder, "evolve"):
        assert (folder / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} ")
        with pytest.raises(FolderInUse, match=f"in use by another minievo process \\(pid "
                                              f"{os.getpid()} "):
            with run_lock(folder, "train"):
                pass
        with pytest.raises(FolderInUse):
            with run_lock(folder, "report", shared=True):
                pass
    with run_lock(folder, "report", shared=True), run_lock(folder, "report", shared=True):
        pass  # readers share


def test_a_refused_or_empty_start_leaves_nothing_behind(tmp_path):
    folder = tmp_path / "new"
    with pytest.raises(RuntimeError), run_lock(folder, "evolve"):
        raise RuntimeError("refused before writing anything")
    assert not folder.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with run_lock(kept, "evolve"):
        pass
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]


def test_the_lock_of_a_killed_process_is_recovered(tmp_path):
    folder = tmp_path / "run"
    code = ("import sys, time; from minievo.runlock import run_lock\n"
            f"with run_lock({str(folder)!r}, 'evolve'):\n"
            "    (__import__('pathlib').Path(sys.argv[1]) / 'config.json').write_text('{}')\n"
            "    print('locked', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderInUse, match=f"pid {holder.pid} "):
            with run_lock(folder, "evolve"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run_lock(folder, "evolve"):  # the kernel dropped the killed process's lock
        assert f"pid {os.getpid()} " in (folder / LOCK_NAME).read_text()


def test_two_different_runs_started_at_once_on_one_folder(tmp_path):
    out = tmp_path / "evo"
    runs = {seed: start(*EVOLVE, "--seed", str(seed), "--out", str(out)) for seed in (0, 1)}
    results = {seed: (p.wait(timeout=300), *p.communicate()) for seed, p in runs.items()}
    codes = sorted(code for code, _, _ in results.values())
    assert codes == [0, 2], results
    winner = next(s for s, (code, _, _) in results.items() if code == 0)
    loser = 1 - winner
    _, out_l, err_l = results[loser]
    lines = err_l.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minievo: error: "), err_l
    assert "in use by another minievo process (pid " in lines[0]
    assert str(runs[winner].pid) in lines[0]
    assert "generation" not in out_l.replace("1 generations", "")  # it printed no table
    # the folder holds the winner's run, whole: its config, its rows
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["seed"] == winner
    rows = json.loads((out / "lineage.json").read_text())["rows"]
    assert [r["generation"] for r in rows] == [0, 1]
    _, out_w, _ = results[winner]
    assert f"{rows[1]['synapses']:,}" in out_w
    # the loser's command, run again now, is refused as another run (not resumed as its own)
    again = start(*EVOLVE, "--seed", str(loser), "--out", str(out))
    code, _, err = again.wait(timeout=120), *again.communicate()
    assert code == 2 and "holds a different evolve run" in err and "seed" in err
