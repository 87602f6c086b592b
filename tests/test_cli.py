"""The ``minievo`` command: train and evolve end to end, resume after SIGKILL, one-line errors.

End-to-end runs go through a subprocess (``python -m minievo.cli``), as a user would; the
error cases call ``main()`` in-process, which is the same code without the start-up cost.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minievo import backend, models, optim, training
from minievo import checkpoint as ckpt
from minievo.cli import main

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--dataset", "synthetic-digits", "--limit-train", "512", "--epochs", "1",
         "--no-progress"]
# one thread per process: the tests' runs are tiny, and a shared machine's cores are busy
ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
           PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def minievo(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "minievo.cli", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def call_main(capsys, *args):
    """``main(args)`` in this process: (exit status, stdout, stderr)."""
    with backend.using_backend("numpy"):
        status = main(list(args))
    out = capsys.readouterr()
    return status, out.out, out.err


def assert_one_line_error(err: str, *needles: str):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("minievo: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


def model_weights(path):
    arrays, meta = ckpt.load(path)
    return {k: v for k, v in arrays.items() if k.startswith("model/")}, meta


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`minievo train --dataset synthetic-digits --limit-train 512 --epochs 1 --out DIR`."""
    out = tmp_path_factory.mktemp("train") / "run"
    result = minievo(*TRAIN, "--out", str(out))
    return out, result


# ----------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------
def test_train_writes_checkpoint_and_metrics(trained):
    out, result = trained
    assert result.returncode == 0, result.stderr
    assert (out / "checkpoint.npz").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 1
    assert metrics["config"]["limit_train"] == 512 and metrics["config"]["epochs"] == 1
    assert metrics["config"]["dataset"] == "synthetic-digits"
    assert 0.2 < metrics["test_accuracy"] <= 1  # 8 steps of LeNet-5 on 10 orientations
    assert "test accuracy" in result.stdout and "checkpoint.npz" in result.stdout
    _, meta = model_weights(out / "checkpoint.npz")
    assert meta["fit_state"]["epoch"] == 1 and meta["fit_state"]["step_in_epoch"] == 0
    assert json.loads((out / "config.json").read_text())["kind"] == "train"


def test_train_into_a_folder_holding_another_run_is_refused(trained, capsys):
    out, _ = trained
    before = (out / "checkpoint.npz").read_bytes()
    status, _, err = call_main(capsys, *TRAIN[:-3], "--epochs", "2", "--out", str(out))
    assert status == 2
    assert_one_line_error(err, f"output directory {out} holds a different train run",
                          "differs in: epochs", "use another --out")
    assert (out / "checkpoint.npz").read_bytes() == before


def test_train_into_a_folder_holding_other_files_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    status, _, err = call_main(capsys, *TRAIN, "--out", str(tmp_path))
    assert status == 2
    assert_one_line_error(err, "is not empty and holds no minievo train run")


def test_train_killed_mid_epoch_resumes_to_the_same_network(trained, tmp_path):
    ref_out, ref_result = trained
    assert ref_result.returncode == 0, ref_result.stderr
    out = tmp_path / "run"
    ck = out / "checkpoint.npz"
    cmd = [sys.executable, "-m", "minievo.cli", *TRAIN, "--out", str(out),
           "--checkpoint-seconds", "0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not ck.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        assert proc.poll() is None, "the run ended before its first checkpoint"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    _, meta = model_weights(ck)
    state = meta["fit_state"]
    assert state["epoch"] == 0 and 0 < state["step_in_epoch"] < 8  # killed inside epoch 1
    assert not (out / "metrics.json").exists()

    result = minievo(*TRAIN, "--out", str(out))  # the same command again
    assert result.returncode == 0, result.stderr
    assert f"resuming {out} at epoch 1, batch {state['step_in_epoch']}" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    ref_metrics = json.loads((ref_out / "metrics.json").read_text())
    drop = ("train_seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in metrics["history"]] == \
        [{k: v for k, v in r.items() if k not in drop} for r in ref_metrics["history"]]
    weights, _ = model_weights(ck)
    ref_weights, _ = model_weights(ref_out / "checkpoint.npz")
    assert set(weights) == set(ref_weights)
    for k in ref_weights:
        np.testing.assert_array_equal(weights[k], ref_weights[k], err_msg=k)


def test_train_bad_flags_give_one_line_errors(tmp_path, capsys):
    status, _, err = call_main(capsys, *TRAIN, "--lr-policy", "cosine", "--out",
                               str(tmp_path / "a"))
    assert status == 2
    assert_one_line_error(err, "--lr-policy", "'cosine'", "inv, step, fixed")

    status, _, err = call_main(capsys, *TRAIN, "--backend", "tpu", "--out", str(tmp_path / "b"))
    assert status == 2
    assert_one_line_error(err, "tpu", "numpy")


def test_train_divergence_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "run"
    with np.errstate(all="ignore"):
        status, _, err = call_main(capsys, "train", "--model", "lenet300_100", "--dataset",
                                   "synthetic-digits", "--limit-train", "256", "--lr", "1e8",
                                   "--lr-policy", "fixed", "--no-progress", "--out", str(out))
    assert status == 2
    assert_one_line_error(err, "stopping", "smaller learning rate")
    assert not (out / "metrics.json").exists()


# ----------------------------------------------------------------------------------------------
# evolve
# ----------------------------------------------------------------------------------------------
EVOLVE = ["evolve", "--dataset", "synthetic-digits", "--generations", "1", "--ancestor-epochs",
          "1", "--offspring-epochs", "1", "--limit-train", "128", "--limit-test", "100",
          "--no-progress"]


def test_evolve_end_to_end(tmp_path):
    out = tmp_path / "evo"
    result = minievo(*EVOLVE, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "minievo evolve: lenet5 on synthetic-digits, 1 generations" in result.stdout
    assert "generation 1: " in result.stdout and "fewer synapses than generation 0" in \
        result.stdout
    for name in ("table.csv", "table.json", "table.md", "lineage.json", "config.json",
                 "accuracy_vs_synapses.png", "efficiency.png", "layer_density.png",
                 "conv_masks.png", "gen_000/model.npz", "gen_001/model.npz"):
        assert (out / name).exists(), name
    rows = json.loads((out / "table.json").read_text())
    assert [r["generation"] for r in rows] == [0, 1]
    assert rows[1]["synapses"] < rows[0]["synapses"] == 430500
    assert json.loads((out / "config.json").read_text())["config"]["limit_train"] == 128

    # the same command again: nothing left to do
    again = minievo(*EVOLVE, "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert "already finished" in again.stdout
    assert json.loads((out / "table.json").read_text()) == rows


def test_evolve_bad_input_gives_one_line_errors(tmp_path, capsys):
    status, _, err = call_main(capsys, *EVOLVE, "--f-c", "0", "--out", str(tmp_path / "a"))
    assert status == 2
    assert_one_line_error(err, "f_c = 0.0 is outside (0, 1]")

    status, _, err = call_main(capsys, *EVOLVE, "--f-s", "1.5", "--out", str(tmp_path / "a"))
    assert status == 2
    assert_one_line_error(err, "f_s = 1.5 is outside (0, 1]")

    status, _, err = call_main(capsys, *EVOLVE, "--granularity", "synapse", "--out",
                               str(tmp_path / "a"))
    assert status == 2
    assert_one_line_error(err, "unknown granularity 'synapse'")

    status, _, err = call_main(capsys, *EVOLVE, "--offspring-per-generation", "2", "--out",
                               str(tmp_path / "a"))
    assert status == 2
    assert_one_line_error(err, "set val_fraction in (0, 1)")

    status, _, err = call_main(capsys, *EVOLVE, "--pace-margin", "0.003", "--out",
                               str(tmp_path / "a"))
    assert status == 2
    assert_one_line_error(err, "a validation pace (--pace-margin) needs a validation split")

    status, _, err = call_main(capsys, *EVOLVE, "--pace-margin", "2", "--val-fraction", "0.2",
                               "--out", str(tmp_path / "a"))
    assert status == 2
    assert_one_line_error(err, "pace margin = 2.0 is outside (0, 1)")
    assert not (tmp_path / "a").exists()  # nothing written for a refused configuration


def test_evolve_from_an_ancestor_of_another_model_is_refused(tmp_path, capsys):
    path = tmp_path / "checkpoint.npz"
    model = models.build("lenet300_100")
    training.save_training_checkpoint(path, model, optim.SGD(model.parameters()),
                                      training.FitState())
    status, _, err = call_main(capsys, *EVOLVE, "--ancestor-path", str(path), "--out",
                               str(tmp_path / "evo"))
    assert status == 2
    assert_one_line_error(err, f"{path}: this checkpoint does not fit model 'lenet5'")


def test_evolve_into_a_folder_holding_another_run_is_refused(tmp_path, capsys):
    out = tmp_path / "evo"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"kind": "evolve", "config": {"seed": 5}}))
    (out / "lineage.json").write_text("{}")  # it produced something: never overwritten
    status, _, err = call_main(capsys, *EVOLVE, "--out", str(out))
    assert status == 2
    assert_one_line_error(err, "holds a different evolve run", "use another --out")
    assert (out / "lineage.json").read_text() == "{}"


def test_doctor_reports_the_kernels(capsys):
    """`minievo doctor` names the native CPU kernel's library (or why there is none) and the
    state of the CUDA kernels, and exits 0 either way."""
    from minievo.kernels import native

    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("CPU kernel"))
    if native.available():
        assert str(native.load().path) in line
    else:
        assert "unavailable" in line and "scipy.sparse" in line
    assert any(x.startswith("RawKernel") for x in out.splitlines())
