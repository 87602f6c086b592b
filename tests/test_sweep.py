"""``minievo sweep``: the grid, bad input, and a real two-worker Dask LocalCluster sweep with a
worker killed mid-sweep (the sweep must finish with the same table as an uninterrupted one).

The lineages are the real LeNet-5 on a few hundred synthetic digits, a few generations each.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import pytest

from minievo import cli
from minievo.evolution import sweep
from minievo.experiment import UsageError

TINY = dict(dataset="synthetic-digits", generations=3, ancestor_epochs=1, offspring_epochs=1,
            limit_train=192, limit_test=200, val_fraction=0.25, target_retention=0.5)


def tiny_spec(seeds=(0, 1, 2), **grid):
    return sweep.make_spec("paper-mnist", list(seeds), dict(TINY), grid=grid or None)


def deterministic(report: dict) -> list:
    """What must not change between two runs of the same sweep: every table, no timings."""
    return [(s["per_generation"], s["equal_loss"], s["equal_loss_per_seed"])
            for s in report["settings"]]


# ----------------------------------------------------------------------------------------------
# the grid
# ----------------------------------------------------------------------------------------------
def test_grid_from_flags_is_the_product_of_the_axes_times_the_seeds(tmp_path):
    args = cli.build_parser().parse_args(
        ["sweep", "--out", str(tmp_path / "s"), "--seeds", "0-2", "--set", "f-s=0.9,1",
         "--set", "offspring_epochs=1,2", "--set", "dataset=synthetic-digits"])
    from minievo.evolution.cli import spec_from_args

    spec = spec_from_args(args)
    assert spec["seeds"] == [0, 1, 2]
    assert spec["base"] == {"dataset": "synthetic-digits"}
    assert spec["settings"] == [{"f_s": 0.9, "offspring_epochs": 1},
                                {"f_s": 0.9, "offspring_epochs": 2},
                                {"f_s": 1.0, "offspring_epochs": 1},
                                {"f_s": 1.0, "offspring_epochs": 2}]
    plan = sweep.lineages(spec)
    assert len(plan) == 12 and len({p["dir"] for p in plan}) == 12
    assert plan[5]["config"]["seed"] == 2 and plan[5]["config"]["offspring_epochs"] == 2
    assert plan[5]["config"]["target_retention"] == 0.66  # the preset's, not overridden


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_grid_from_a_file(tmp_path, suffix):
    path = tmp_path / f"grid{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"preset": "literal", "seeds": [3, 4],
                                    "base": {"generations": 2},
                                    "settings": [{"f_s": 1.0}, {"target_retention": 0.5,
                                                                "retention_control": "quantile"}]}))
    else:
        path.write_text('preset = "literal"\nseeds = [3, 4]\n[base]\ngenerations = 2\n'
                        '[[settings]]\nf_s = 1.0\n[[settings]]\ntarget_retention = 0.5\n'
                        'retention_control = "quantile"\n')
    args = cli.build_parser().parse_args(["sweep", "--out", "x", "--grid", str(path)])
    from minievo.evolution.cli import spec_from_args

    spec = spec_from_args(args)
    assert spec["preset"] == "literal" and spec["seeds"] == [3, 4]
    assert [sweep.config_of(spec, i, 3).target_retention for i in range(2)] == [None, 0.5]
    assert sweep.config_of(spec, 0, 4).generations == 2


@pytest.mark.parametrize("argv, message", [
    (["--set", "no_such_option=1,2"], "unknown grid option 'no_such_option'"),
    (["--set", "f_s=2"], "outside (0, 1]"),
    (["--set", "generations=two"], "not a valid int"),
    (["--set", "f_s"], "write OPTION=VALUE"),
    (["--seeds", "a,b"], "--seeds"),
    (["--seeds", "1,1"], "each once"),
    (["--set", "limit_test=0"], "--limit-test 0: allowed: an integer >= 1"),
    (["--grid", "/nonexistent/grid.json"], "cannot read grid file"),
])
def test_bad_grids_are_one_line_errors(tmp_path, capsys, argv, message):
    assert cli.main(["sweep", "--out", str(tmp_path / "s"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minievo: error: ") and message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "s").exists()  # nothing started


def test_grid_file_with_an_unknown_key_is_refused(tmp_path, capsys):
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"seeds": [0], "grids": {"f_s": [1]}}))
    assert cli.main(["sweep", "--out", str(tmp_path / "s"), "--grid", str(path)]) == 2
    assert "unknown key(s) grids" in capsys.readouterr().err


def test_without_dask_the_error_names_the_install_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` fails
    assert cli.main(["sweep", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'minievo[sweep]'" in err


def test_an_unreachable_scheduler_is_a_one_line_error(tmp_path, capsys):
    pytest.importorskip("distributed")
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["sweep", "--out", str(tmp_path / "s"), "--scheduler", f"tcp://127.0.0.1:{port}",
            "--set", "dataset=synthetic-digits"]
    t0 = time.time()
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"minievo: error: cannot reach the Dask scheduler at tcp://127.0.0.1:"
                          f"{port}") and err.count("\n") == 1
    assert time.time() - t0 < 60


# ----------------------------------------------------------------------------------------------
# a real sweep on a two-worker LocalCluster
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    pytest.importorskip("distributed")
    c = sweep.start_client(workers=2)
    yield c
    cluster = c.cluster
    c.close()
    cluster.close()


def _kill_mid_sweep(client, out, killed: list, stop: threading.Event):
    """Kill (SIGKILL) the worker running a lineage that has finished a generation but not
    the whole lineage; records (lineage, pid, rows it had)."""
    while not stop.is_set() and not killed:
        for addr, keys in client.processing().items():
            for key in keys:
                name = key[len("minievo-lineage-"):].rsplit("-", 1)[0]
                folder = out / name
                rows = sweep.read_rows(folder)
                if 1 <= len(rows) <= 2 and not (folder / "done.json").exists():
                    pid = client.run(os.getpid, workers=[addr])[addr]
                    os.kill(pid, signal.SIGKILL)
                    killed.append((name, pid, len(rows)))
                    return
        time.sleep(0.05)


def test_a_sweep_with_a_worker_killed_resumes_to_the_same_table(client, tmp_path, capsys):
    # workers run with one BLAS thread each
    assert set(client.run(lambda: os.environ.get("OPENBLAS_NUM_THREADS")).values()) == {"1"}
    spec = tiny_spec()
    logs: list[str] = []
    reference = sweep.run_sweep(spec, tmp_path / "reference", client=client, log=logs.append,
                                poll=0.2, plots=False)
    assert sum("finished" in line for line in logs) == 3
    assert any("setting_0/seed_1: generation 2/3" in line for line in logs)  # progress
    table = reference["settings"][0]["per_generation"]
    assert [r["seeds"] for r in table] == [3, 3, 3, 3]
    assert table[3]["synapses_mean"] < table[0]["synapses_mean"]
    assert table[1]["test_error_std"] > 0  # three different seeds, three different lineages

    out = tmp_path / "killed"
    killed: list = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_mid_sweep, args=(client, out, killed, stop))
    killer.start()
    try:
        report = sweep.run_sweep(spec, out, client=client, log=lambda line: None, poll=0.2)
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker was killed mid-lineage"
    name, pid, rows_before = killed[0]
    done = json.loads((out / name / "done.json").read_text())
    assert done["pid"] != pid  # finished by another (or the restarted) worker process
    assert deterministic(report) == deterministic(reference)
    assert (out / "error_vs_synapses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "aggregate.md").read_text()
    assert "test set: 200 images" in md and "validation split: 48 images" in md
    assert "| 0.3 points | validation |" in md and "| 1.0 points | test |" in md

    # rerun from the command line: everything finished, skipped, the same table
    before = (out / "aggregate.json").read_text()
    lineage_files = {p: p.read_bytes() for p in out.glob("setting_0/seed_*/lineage.json")}
    argv = ["sweep", "--out", str(out), "--seeds", "0,1,2"]
    for k, v in TINY.items():
        argv += ["--set", f"{k}={v}"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished, skipped") == 3
    assert json.loads((out / "aggregate.json").read_text()) == json.loads(before)

    # a different sweep in the same folder is refused; finished lineages are untouched
    assert cli.main(argv[:-2] + ["--set", "generations=4"]) == 2
    err = capsys.readouterr().err
    assert "holds a different sweep" in err and err.count("\n") == 1
    assert {p: p.read_bytes() for p in lineage_files} == lineage_files


def test_a_sweep_stopped_between_lineages_resumes_only_the_rest(client, tmp_path):
    spec = tiny_spec(seeds=(0,), offspring_epochs=[1, 2])
    out = tmp_path / "s"
    sweep.run_sweep(spec, out, client=client, log=lambda line: None, poll=0.2, plots=False)
    # as if the sweep had been stopped in generation 2 of setting 1: drop its last rows
    folder = out / "setting_1" / "seed_0"
    record = json.loads((folder / "lineage.json").read_text())
    full = record["rows"]
    record["rows"] = full[:2]
    (folder / "lineage.json").write_text(json.dumps(record))
    (folder / "done.json").unlink()
    finished = (out / "setting_0" / "seed_0" / "lineage.json").read_bytes()
    logs: list[str] = []
    sweep.run_sweep(spec, out, client=client, log=logs.append, poll=0.2, plots=False)
    assert "setting_0/seed_0: finished, skipped" in logs
    assert "setting_1/seed_0: resuming after generation 1" in logs
    assert (out / "setting_0" / "seed_0" / "lineage.json").read_bytes() == finished
    resumed = json.loads((folder / "lineage.json").read_text())["rows"]
    timing = ("train_seconds", "eval_seconds")
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed] == \
        [{k: v for k, v in r.items() if k not in timing} for r in full]


def test_equal_loss_picks_the_sparsest_generation_within_each_budget():
    rows = [dict(generation=g, test_accuracy=a, val_accuracy=v, synaptic_efficiency=e,
                 cluster_efficiency_kernel=1.0)
            for g, a, v, e in [(0, 0.9900, 0.9800, 1.0), (1, 0.9895, 0.9790, 2.0),
                               (2, 0.9880, 0.9795, 4.0), (3, 0.9850, 0.9700, 8.0),
                               (4, 0.9700, 0.9500, 16.0)]]
    eq = sweep.equal_loss(rows)
    assert eq["within_0.1"]["generation"] == 1
    assert eq["within_0.3"]["generation"] == 2
    assert eq["within_1.0"]["generation"] == 3
    assert eq["within_0.3"]["loss_points"] == pytest.approx(0.2)
    # on validation: gen 2 is within 0.1 of 98.00% (97.95%), gen 3 is 1.0 below
    assert eq["val_chosen_0.1"]["generation"] == 2
    assert eq["val_chosen_1.0"]["generation"] == 3
    assert eq["val_chosen_0.1"]["test_error"] == pytest.approx(1.2)


def test_the_api_refuses_what_the_command_line_refuses(tmp_path):
    with pytest.raises(UsageError, match="unknown grid option 'f_x'"):
        sweep.make_spec("paper-mnist", [0], grid={"f_x": [1]})
    with pytest.raises(UsageError, match="unknown preset"):
        sweep.make_spec("nope", [0])
    with pytest.raises(UsageError, match="setting 1 .*target retention 1.5"):
        sweep.make_spec("paper-mnist", [0], settings=[{}, {"target_retention": 1.5}])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty and holds no minievo sweep"):
        sweep.prepare_folder(tmp_path / "other", sweep.make_spec("paper-mnist", [0]))
    assert (tmp_path / "other" / "file.txt").read_text() == "mine"


def test_workers_run_with_the_accelerator_choice_of_the_sweep(client, tmp_path):
    # A worker is a process of its own: what the starting process chose (the command enables
    # the accelerator unless --no-accel) must be passed on. Each lineage records what it ran.
    spec = tiny_spec(seeds=(0,))
    for accel in (True, False):
        out = tmp_path / f"accel_{accel}"
        sweep.run_sweep(spec, out, client=client, log=lambda line: None, poll=0.2, plots=False,
                        accel=accel, sparse_training="off")
        config = json.loads((out / "setting_0" / "seed_0" / "config.json").read_text())
        assert config["numerics"]["accel"] is accel
        assert config["numerics"]["sparse_training"] == "off"


def test_the_report_summarises_each_lineage_with_its_pace(tmp_path):
    # two hand-written lineages of a paced setting (10 generations configured): seed 0 ended
    # by the pace after generation 3 (one rejection in generation 2, then two rejected tries
    # of generation 4 that ended it), seed 1 still running
    spec = sweep.make_spec("paper-mnist", [0, 1], dict(TINY, generations=10, pace_margin=0.003))
    out = tmp_path / "s"
    sweep.prepare_folder(out, spec)

    def row(g, acc, val, eff, tries=None):
        r = dict(generation=g, test_accuracy=acc, val_accuracy=val, synaptic_efficiency=eff,
                 cluster_efficiency_kernel=1.0, cluster_efficiency_filter=1.0, synapses=100)
        if tries is not None:
            r["pace_tries"] = tries
        return r

    lineages = {0: [row(0, 0.99, 0.98, 1.0), row(1, 0.989, 0.979, 1.5, 1),
                    row(2, 0.988, 0.978, 2.0, 2), row(3, 0.985, 0.9775, 3.0, 1)],
                1: [row(0, 0.99, 0.98, 1.0), row(1, 0.99, 0.98, 1.5, 1)]}
    for seed, rows in lineages.items():
        folder = out / "setting_0" / f"seed_{seed}"
        folder.mkdir(parents=True)
        (folder / "lineage.json").write_text(json.dumps({"rows": rows}))
        tries = [(r["generation"], t) for r in rows[1:] for t in range(r["pace_tries"])]
        tries += [(4, 0), (4, 1)] if seed == 0 else []
        for g, t in tries:
            (folder / f"gen_{g:03d}" / f"try_{t}").mkdir(parents=True)
            (folder / f"gen_{g:03d}" / f"try_{t}" / "row.json").write_text("{}")
    (out / "setting_0" / "seed_0" / "done.json").write_text("{}")
    report = sweep.write_report(out, spec, plots=False)
    s0, s1 = report["settings"][0]["lineages"]
    assert (s0["seed"], s0["generations"], s0["tries"], s0["rejected"]) == (0, 3, 6, 3)
    assert s0["ended"].startswith("early") and s1["ended"] == "not yet"
    assert s0["val_chosen_0.3"]["generation"] == 3
    assert s0["val_chosen_0.3"]["loss_points"] == pytest.approx(0.5)
    assert s0["last_test_error"] == pytest.approx(1.5)
    md = (out / "aggregate.md").read_text()
    # the last test error carries its binomial SE on the 200 test images the config implies
    assert "| 0 | 3 | early (validation pace or stopping rule) | 3.0x | 1.50 ± 0.86% | " \
           "3, 3.0x, 0.50 | 6 | 3 |" in md
    assert "| 1 | 1 | not yet | 1.5x | 1.00 ± 0.70% | 1, 1.5x, 0.00 | 1 | 0 |" in md


def test_an_ancestor_per_seed_is_named_by_a_seed_placeholder(tmp_path):
    for seed in (3, 4):
        (tmp_path / f"seed_{seed}.npz").write_bytes(b"")
    spec = sweep.make_spec("paper-mnist", [3, 4],
                           {"ancestor_path": str(tmp_path / "seed_{seed}.npz")})
    assert [sweep.config_of(spec, 0, s).ancestor_path for s in (3, 4)] == \
        [str(tmp_path / "seed_3.npz"), str(tmp_path / "seed_4.npz")]
    with pytest.raises(UsageError, match=r"setting 0, seed 5: ancestor_path .*seed_5\.npz is "
                                         r"not a file"):
        sweep.make_spec("paper-mnist", [3, 5],
                        {"ancestor_path": str(tmp_path / "seed_{seed}.npz")})
