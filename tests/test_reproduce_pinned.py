"""The first generations of a short fixed-seed lineage, pinned exactly under fixed kernels.

A change to the numerics (the order of a sum, a float64 accumulator, the metrics code, a
sampler) changes these numbers; this test shows it in the commit that makes it, instead of
when somebody next fails to reproduce a committed table. The run is the paper-mnist pipeline
shrunk: `minievo evolve` with LeNet-5 on 512 synthetic digits (no network), two ancestor
epochs, two generations of one epoch, in a subprocess with the kernels pinned the way
docs/results/index.md ("Reproducing a committed table exactly") says:
``OPENBLAS_CORETYPE=Haswell``, one BLAS thread, ``--sparse-training off``, and NumPy's own
loops at AVX2 (``NPY_DISABLE_CPU_FEATURES`` turns off its AVX-512 targets, which sum in
another order: measured here, turning off its AVX2 target instead changes generation 1 of a
small paper-mnist run from 283,003 to 283,512 synapses).

Pinned for each generation 0-2: every table.json entry named below (synapse and cluster
counts, efficiencies, densities, test accuracy, retention; the timings are left out) exactly,
the training loss and accuracy of each epoch exactly as recorded, and a sha256 of the saved
model's masks, weights and biases. Entries the run writes beyond these are not checked.

The numbers were measured with the commit this file came with, NumPy 2.4.6 and its OpenBLAS
0.3.31.188.0 (Haswell kernels, AMD EPYC); identical with and without ``OPENBLAS_CORETYPE``
there (its default kernels are Haswell), different under Sandybridge kernels. The test
skips only where OpenBLAS cannot run its Haswell kernels (another library, a CPU without
AVX2, ARM); another NumPy or OpenBLAS version may change the numbers, and the failure then
says which versions ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minievo import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
EVOLVE = ["evolve", "--dataset", "synthetic-digits", "--generations", "2", "--ancestor-epochs",
          "2", "--offspring-epochs", "1", "--limit-train", "512", "--limit-test", "200",
          "--seed", "0", "--sparse-training", "off", "--no-progress"]
PINNED_UNDER = {"numpy": "2.4.6", "blas_library": "openblas", "blas_version": "0.3.31.188.0",
                "blas_architecture": "Haswell"}

PINNED = {
    0: {
        "row": {
            "generation": 0, "synapses": 430500, "effective_synapses": 430500, "kernels": 1020,
            "filters": 70, "neurons": 510, "clusters_kernel": 1530, "clusters_filter": 580,
            "effective_clusters_kernel": 1530, "effective_clusters_filter": 580,
            "synaptic_efficiency": 1.0, "effective_synaptic_efficiency": 1.0,
            "cluster_efficiency_kernel": 1.0, "cluster_efficiency_filter": 1.0,
            "macs_dense": 2293000, "macs": 2293000, "macs_effective": 2293000,
            "density_0": 1.0, "density_2": 1.0, "density_5": 1.0, "density_7": 1.0,
            "test_accuracy": 0.86, "test_images": 200,
        },
        "epochs": [(2.0409782379865646, 0.306640625), (0.7646236605942249, 0.73828125)],
        "sha256": "e194a55bd205b4db346e1ad681ccb68aefc0cc8afcc569053656f7ba726578e7",
    },
    1: {
        "row": {
            "generation": 1, "synapses": 282440, "effective_synapses": 281560, "kernels": 958,
            "filters": 69, "neurons": 501, "clusters_kernel": 1459, "clusters_filter": 570,
            "effective_clusters_kernel": 1414, "effective_clusters_filter": 570,
            "synaptic_efficiency": 1.5242175329273473,
            "effective_synaptic_efficiency": 1.5289813894019038,
            "cluster_efficiency_kernel": 1.0486634681288554,
            "cluster_efficiency_filter": 1.0175438596491229,
            "macs_dense": 2293000, "macs": 1629295, "macs_effective": 1577007,
            "density_0": 0.908, "density_2": 0.6894, "density_5": 0.652765, "density_7": 0.729,
            "test_accuracy": 0.955, "test_images": 200, "f_c": 1.0, "f_s": 1.0,
            "synapse_quantile": 0.5930179851074219, "expected_retention": 0.660014085126491,
            "sampled_retention": 0.6560743321718931,
        },
        "epochs": [(0.36605511233210564, 0.935546875)],
        "sha256": "564287fb1f0b00c71f308d9a1cd2569d07dc2cc4f725d94e398c7d6d24dceb04",
    },
    2: {
        "row": {
            "generation": 2, "synapses": 186871, "effective_synapses": 184994, "kernels": 873,
            "filters": 67, "neurons": 494, "clusters_kernel": 1367, "clusters_filter": 561,
            "effective_clusters_kernel": 1241, "effective_clusters_filter": 561,
            "synaptic_efficiency": 2.303728240336917,
            "effective_synaptic_efficiency": 2.327102500621642,
            "cluster_efficiency_kernel": 1.119239209948793,
            "cluster_efficiency_filter": 1.0338680926916222,
            "macs_dense": 2293000, "macs": 1176366, "macs_effective": 1061593,
            "density_0": 0.776, "density_2": 0.4866, "density_5": 0.4289225, "density_7": 0.5498,
            "test_accuracy": 0.93, "test_images": 200, "f_c": 1.0, "f_s": 1.0,
            "synapse_quantile": 0.8139650297851562, "expected_retention": 0.6599746333814681,
            "sampled_retention": 0.6616307888401076,
        },
        "epochs": [(0.47293126955628395, 0.927734375)],
        "sha256": "aaf52355b7cb3673dfd5ee02184a9927027b745e8e44f52e9abb79f61f245d0d",
    },
}


def _above_avx2() -> list[str]:
    """NumPy's dispatched SIMD targets beyond AVX2 (X86_V3): its loops sum in another order
    with AVX-512, so the pinned run turns those off and reads the same on any AVX2 CPU."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__
    except ImportError:
        return []
    if "X86_V3" not in __cpu_dispatch__:
        return []
    return list(__cpu_dispatch__[__cpu_dispatch__.index("X86_V3") + 1:])


ABOVE_AVX2 = _above_avx2()


def pinned_env() -> dict:
    """The environment of the pinned run: Haswell kernels, one thread, no minievo overrides."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MINIEVO_") or k == "MINIEVO_NATIVE_CACHE"}
    env.update(OPENBLAS_CORETYPE="Haswell", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", NPY_DISABLE_CPU_FEATURES=" ".join(ABOVE_AVX2),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return env


def model_sha256(path: Path) -> str:
    """sha256 over a saved model's arrays: name, dtype, shape and bytes, in name order."""
    arrays, _ = ckpt.load(path)
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def measured(out: Path) -> dict:
    """What PINNED holds, read from a finished run folder."""
    rows = {r["generation"]: r for r in json.loads((out / "table.json").read_text())}
    got = {}
    for g in PINNED:
        history = ckpt.load(out / f"gen_{g:03d}" / "train.npz")[1]["fit_state"]["history"]
        got[g] = {"row": rows.get(g, {}),
                  "epochs": [(e["train_loss"], e["train_accuracy"]) for e in history],
                  "sha256": model_sha256(out / f"gen_{g:03d}" / "model.npz")}
    return got


def differences(got: dict) -> list[str]:
    lines = []
    for g, pin in PINNED.items():
        for key, value in pin["row"].items():
            if got[g]["row"].get(key, "<missing>") != value:
                lines.append(f"generation {g} {key}: pinned {value!r}, "
                             f"got {got[g]['row'].get(key, '<missing>')!r}")
        for what in ("epochs", "sha256"):
            if got[g][what] != pin[what]:
                lines.append(f"generation {g} {what}: pinned {pin[what]!r}, "
                             f"got {got[g][what]!r}")
    return lines


@pytest.fixture(scope="module")
def pinned_run(tmp_path_factory):
    probe = ("import json, numpy as np; from minievo.experiment import blas_kernels, "
             "numpy_simd; np.ones((64, 64), np.float32) @ np.ones((64, 64), np.float32); "
             "print(json.dumps(dict(blas_kernels(), numpy=np.__version__, "
             "simd=numpy_simd())))")
    result = subprocess.run([sys.executable, "-c", probe], env=pinned_env(), cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    kernels = json.loads(result.stdout) if result.returncode == 0 else {}
    if kernels.get("blas_library") != "openblas" or kernels.get("blas_architecture") != \
            "Haswell":
        pytest.skip("OpenBLAS cannot run its Haswell kernels here (OPENBLAS_CORETYPE=Haswell "
                    f"gave {kernels or result.stderr.strip()[-200:]})")
    if kernels.get("simd") != "X86_V3":
        pytest.skip(f"NumPy's loops cannot run at exactly AVX2 here (SIMD targets on: "
                    f"{kernels.get('simd')})")
    out = tmp_path_factory.mktemp("pinned") / "run"
    run = subprocess.run([sys.executable, "-m", "minievo.cli", *EVOLVE, "--out", str(out)],
                         env=pinned_env(), cwd=ROOT, capture_output=True, text=True,
                         timeout=180)
    assert run.returncode == 0, run.stderr
    return out, kernels


def test_the_run_records_the_pinned_kernels(pinned_run):
    out, kernels = pinned_run
    numerics = json.loads((out / "config.json").read_text())["numerics"]
    assert numerics["blas_architecture"] == "Haswell" and numerics["blas_num_threads"] == 1
    assert numerics["blas_threads"] == "1" and numerics["sparse_training"] == "off"
    assert {k: numerics[k] for k in ("blas_library", "blas_version")} == \
        {k: kernels[k] for k in ("blas_library", "blas_version")}


def test_generations_0_to_2_repeat_the_pinned_numbers_exactly(pinned_run):
    out, kernels = pinned_run
    lines = differences(measured(out))
    ran = {k: kernels[k] for k in PINNED_UNDER}
    assert not lines, (
        f"the numerics changed ({len(lines)} differences; pinned under {PINNED_UNDER}, this "
        f"run under {ran}; if the change is meant, re-pin PINNED and say so in the commit):\n"
        + "\n".join(lines))
