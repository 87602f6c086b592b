"""Importing minievo changes nothing in the process; only minievo.accel.enable() does.

A fresh interpreter imports the reference path (minievo, functions, layers, models, training)
and trains a dense LeNet-5 for one step with the accelerator off. Every ``ctypes.CDLL`` load is
recorded (the native kernel is loaded that way, and so is the C library whose ``mallopt`` the
accelerator calls), and the native kernel's cache folder is watched. Then the same interpreter
calls ``minievo.accel.enable()``, which must load the C library for ``mallopt``: the control
that shows the recording works.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import ctypes, json, os, sys

loaded = []
_CDLL = ctypes.CDLL


class RecordingCDLL(_CDLL):
    def __init__(self, name, *args, **kwargs):
        loaded.append(str(name))
        super().__init__(name, *args, **kwargs)


ctypes.CDLL = RecordingCDLL

import numpy as np

import minievo
import minievo.functions as F
from minievo import layers, models, training
from minievo.optim import SGD
from data_loaders import DataLoader

rng = np.random.default_rng(0)
loader = DataLoader(rng.standard_normal((64, 1, 28, 28)).astype(np.float32),
                    rng.integers(0, 10, 64), batch_size=64, shuffle=False)
model = models.lenet5()
w0 = model[0].weight.data.copy()
opt = SGD(model.parameters(), lr=0.01, momentum=0.9)
training.fit(model, loader, opt, 1, progress=False, log=None)
cache = os.environ["MINIEVO_NATIVE_CACHE"]
report = {
    "trained": bool(np.any(model[0].weight.data != w0)),
    "ops": layers.ops.name,
    "loaded": list(loaded),
    "accel_imported": sorted(m for m in sys.modules if m.startswith("minievo.accel")),
    "native_imported": "minievo.kernels.native" in sys.modules,
    "cache_files": sorted(os.listdir(cache)) if os.path.isdir(cache) else [],
    "maps": [line for line in open("/proc/self/maps") if cache in line],
}
import minievo.accel
minievo.accel.enable()
report["loaded_after_enable"] = list(loaded)
report["ops_after_enable"] = layers.ops.name
print(json.dumps(report))
"""


def test_importing_and_training_on_the_reference_path_changes_nothing(tmp_path):
    cache = tmp_path / "native-cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIEVO_")}
    env["MINIEVO_NATIVE_CACHE"] = str(cache)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["trained"] and report["ops"] == "reference"
    assert report["loaded"] == [], "a shared library was loaded (mallopt's libc, the kernel)"
    assert report["accel_imported"] == []
    assert not report["native_imported"]
    assert report["cache_files"] == [] and report["maps"] == []
    # the control: enable() is what calls mallopt, through a CDLL of the C library
    if sys.platform.startswith("linux"):
        assert any("libc" in name for name in report["loaded_after_enable"])
    assert report["ops_after_enable"] == "accel"
