"""Fuzzing of the compact-model loader and the native kernel's C entry points.

Run by tests/test_hardening.py in a child process (``python tests/fuzz_native.py SEED N``),
under AddressSanitizer and UBSan when the kernel was built with them
(``MINIEVO_NATIVE_SANITIZE=1`` and libasan preloaded): a write or read out of bounds aborts the
child, which fails the test. Fixed seeds, a bounded number of cases.

Every case must end in one of: success, or an error the caller is told about (CheckpointError
from the loader; ValueError or TypeError from a kernel call). The last line printed is a JSON
summary of the outcomes.
"""

from __future__ import annotations

import ctypes
import io
import json
import sys
import zipfile

import numpy as np

from minievo import layers as L
from minievo import sparse
from minievo.checkpoint import CheckpointError
from minievo.kernels import native

INTERESTING = [-(2**31), -7, -1, 0, 1, 2, 3, 5, 8, 2**31 - 1, 2**40, 0.5, float("nan"), None,
               "x", True, [], {}]


def base_model(rng) -> tuple[object, tuple]:
    """A small masked conv net with a pooling step, compacted on the native path."""
    net = L.Sequential(L.Conv2d(2, 4, 3), L.MaxPool2d(2), L.ReLU(), L.Flatten(),
                       L.Linear(36, 5))
    for layer in (net.layers[0], net.layers[4]):
        layer.set_mask((rng.random(layer.weight.data.shape) < 0.6).astype(np.float32))
    return sparse.compact(net, input_shape=(2, 8, 8), method="native"), (2, 8, 8)


def _members(data: bytes) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {i.filename[:-4]: np.lib.format.read_array(zf.open(i)) for i in zf.infolist()}


def _write(path, arrays: dict) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


def _numbers(obj, where=()):
    """Paths to every scalar of a JSON value."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, (*where, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, (*where, i))
    else:
        yield where


def _set(obj, where, value):
    for k in where[:-1]:
        obj = obj[k]
    obj[where[-1]] = value


def mutate(rng, arrays: dict) -> dict:
    arrays = {k: v.copy() for k, v in arrays.items()}
    meta = json.loads(str(arrays["__meta__"]))
    for _ in range(rng.integers(1, 3)):
        kind = rng.integers(0, 4)
        names = sorted(k for k in arrays if k != "__meta__")
        if kind == 0:  # a number (or any scalar) of the metadata
            paths = list(_numbers(meta))
            where = paths[rng.integers(len(paths))]
            if where:
                _set(meta, where, INTERESTING[rng.integers(len(INTERESTING))])
        elif kind == 1 and names:  # an element of an array
            name = names[rng.integers(len(names))]
            a = arrays[name]
            if a.size:
                flat = a.reshape(-1)
                pick = [-1, 0, 1, 2**31 - 1, -(2**31), 7, 1000] if a.dtype.kind in "iu" else [
                    np.nan, np.inf, -1.0, 0.5, 3e38]
                v = pick[rng.integers(len(pick))]
                try:
                    flat[rng.integers(a.size)] = v
                except (OverflowError, ValueError):
                    flat[rng.integers(a.size)] = 0
        elif kind == 2 and names:  # the shape or dtype of an array
            name = names[rng.integers(len(names))]
            a = arrays[name]
            change = rng.integers(0, 5)
            if change == 0:
                arrays[name] = a.reshape(-1)[: max(0, a.size - 1)]
            elif change == 1:
                arrays[name] = np.concatenate([a.reshape(-1), a.reshape(-1)[:1]])
            elif change == 2:
                arrays[name] = a.astype(np.complex64)
            elif change == 3:
                arrays[name] = a.astype(np.int64 if a.dtype.kind == "f" else np.float64)
            else:
                arrays[name] = a[None]
        elif names:  # drop an array, or a metadata key
            if rng.random() < 0.5:
                del arrays[names[rng.integers(len(names))]]
            else:
                paths = [p for p in _numbers(meta) if p]
                where = paths[rng.integers(len(paths))]
                parent = meta
                for k in where[:-2]:
                    parent = parent[k]
                if len(where) >= 2 and isinstance(parent[where[-2]], dict):
                    parent[where[-2]].pop(where[-1], None)
    arrays["__meta__"] = np.array(json.dumps(meta))
    return arrays


def fuzz_loader(rng, cases: int, workdir) -> dict:
    cm, shape = base_model(rng)
    base = workdir / "base.npz"
    cm.save(base)
    arrays = _members(base.read_bytes())
    x = rng.standard_normal((3, *shape)).astype(np.float32)
    counts = {"cases": 0, "refused": 0, "loaded": 0, "forward_ok": 0, "forward_error": 0}
    target = workdir / "mutant.npz"
    for _ in range(cases):
        _write(target, mutate(rng, arrays))
        counts["cases"] += 1
        try:
            loaded = sparse.CompactModel.load(target)
        except CheckpointError:
            counts["refused"] += 1
            continue
        counts["loaded"] += 1
        try:
            y = loaded(x)
            assert y.shape == (3, 5)
            counts["forward_ok"] += 1
        except (ValueError, TypeError) as exc:
            counts["forward_error"] += 1
            print("forward error after a successful load:", exc, file=sys.stderr)
    return counts


def _buf(n: int, dtype) -> np.ndarray:
    return np.zeros(max(int(n), 1), dtype=dtype)


def fuzz_entry_points(rng, cases: int) -> dict:
    """Raw ctypes calls with random geometry (negative, zero, inconsistent sizes, pooling of 0
    or -1, mismatched output sizes), every buffer sized by what the caller declares; the C
    code must refuse what does not fit (return 2 or 3), never touch memory outside."""
    k = native.load()
    counts = {"cases": 0, "ok": 0, "refused": 0}
    small = [-2, -1, 0, 1, 2, 3, 4, 5, 9]
    f32p, i32p = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_int32)
    for _ in range(cases):
        # a consistent geometry, then (most of the time) one or two of its numbers changed
        g = {"c": int(rng.integers(1, 4)), "h": int(rng.integers(1, 9)),
             "w": int(rng.integers(1, 9)), "n": int(rng.integers(1, 70)),
             "o": int(rng.integers(0, 4)), "pad": int(rng.integers(0, 3)),
             "stride": int(rng.integers(1, 3))}
        kk = int(rng.integers(1, 4))
        g["oh"] = max(1, (g["h"] + 2 * g["pad"] - kk) // g["stride"] + 1)
        g["ow"] = max(1, (g["w"] + 2 * g["pad"] - kk) // g["stride"] + 1)
        g["pool_k"] = int(rng.integers(0, min(g["oh"], g["ow"]) + 1))
        g["pool_s"] = int(rng.integers(1, 3))
        g["out_h"] = g["oh"] if not g["pool_k"] else (g["oh"] - g["pool_k"]) // g["pool_s"] + 1
        g["out_w"] = g["ow"] if not g["pool_k"] else (g["ow"] - g["pool_k"]) // g["pool_s"] + 1
        g["n0"], g["n1"] = 0, g["n"]
        keys = sorted(g)
        for _ in range(int(rng.choice([0, 1, 1, 2]))):
            g[keys[rng.integers(len(keys))]] = int(rng.choice(small))
        c, h, w, n, o = g["c"], g["h"], g["w"], g["n"], g["o"]
        pad, stride, oh, ow = g["pad"], g["stride"], g["oh"], g["ow"]
        pool_k, pool_s, out_h, out_w, n0, n1 = (g["pool_k"], g["pool_s"], g["out_h"], g["out_w"],
                                                g["n0"], g["n1"])
        # what the caller allocated, from the sizes it declares (at least one element)
        x = _buf(max(c, 0) * max(h, 0) * max(w, 0) * max(n, 0), np.float32)
        xs = (ctypes.c_longlong * 4)(max(h, 0) * max(w, 0) * max(n, 0), max(w, 0) * max(n, 0),
                                     max(n, 0), 1)
        nnz = int(rng.integers(0, 12))
        o_eff = max(o, 0)
        cuts = np.sort(rng.integers(0, nnz + 1, size=o_eff)) if o_eff else np.zeros(0, int)
        syn_ptr = np.concatenate([[0], cuts]).astype(np.int32)
        span = (max(c, 1) * (max(h, 0) + 2 * max(pad, 0) + 2) * (max(w, 0) + 2 * max(pad, 0) + 2))
        off = rng.integers(0, max(c, 1) * kk * kk, size=max(nnz, 1)).astype(np.int32)
        if rng.random() < 0.3:
            off[rng.integers(off.size)] = int(rng.integers(-2, span + 2))
        wt = rng.standard_normal(max(nnz, 1)).astype(np.float32)
        bias = _buf(o_eff, np.float32)
        out = _buf(o_eff * max(out_h, 0) * max(out_w, 0) * max(n, 0), np.float32)
        os_ = (ctypes.c_longlong * 4)(max(out_h, 0) * max(out_w, 0) * max(n, 0),
                                      max(out_w, 0) * max(n, 0), max(n, 0), 1)
        counts["cases"] += 1
        rc = k._conv(x.ctypes.data_as(f32p), c, h, w, n, xs, pad, o,
                     syn_ptr.ctypes.data_as(i32p), off.ctypes.data_as(i32p),
                     wt.ctypes.data_as(f32p), oh, ow, stride, bias.ctypes.data_as(f32p), None,
                     pool_k, pool_s, int(rng.integers(0, 2)), out_h, out_w,
                     out.ctypes.data_as(f32p), None, os_, n0, n1)
        counts["ok" if rc == 0 else "refused"] += 1
        if rc not in (0, 2, 3):
            raise AssertionError(f"unexpected return code {rc}")
        gy = _buf(o_eff * max(oh, 0) * max(ow, 0) * max(n, 0), np.float32)
        gs = (ctypes.c_longlong * 4)(max(oh, 0) * max(ow, 0) * max(n, 0),
                                     max(ow, 0) * max(n, 0), max(n, 0), 1)
        gw = np.zeros(max(nnz, 1), np.float64)
        rc = k._wgrad(x.ctypes.data_as(f32p), c, h, w, n, xs, pad, o,
                      syn_ptr.ctypes.data_as(i32p), off.ctypes.data_as(i32p), oh, ow, stride,
                      gy.ctypes.data_as(f32p), gs,
                      gw.ctypes.data_as(ctypes.POINTER(ctypes.c_double)), n0, n1)
        counts["cases"] += 1
        counts["ok" if rc == 0 else "refused"] += 1
        if rc not in (0, 2, 3):
            raise AssertionError(f"unexpected return code {rc}")
    return counts


def fuzz_wrapper(rng, cases: int) -> dict:
    """The Python layer in front of the kernel: random pools, strides, misaligned views and
    wrong shapes; every refusal is a ValueError or TypeError."""
    k = native.load()
    counts = {"cases": 0, "ok": 0, "refused": 0}
    for _ in range(cases):
        c, h, w, n, o = (int(rng.integers(1, 5)) for _ in range(5))
        h, w = h + 3, w + 3
        stride = int(rng.choice([0, 1, 1, 2, -1]))
        kk = int(rng.integers(1, 4))
        oh = int(rng.choice([(h - kk) // max(stride, 1) + 1] * 3 + [0, h + 3]))
        ow = int(rng.choice([(w - kk) // max(stride, 1) + 1] * 3 + [1, -1]))
        pool = [None, None, (0, 1), (-1, 2), (1, 0), (2, 2), (2, 1), (9, 1)][rng.integers(8)]
        raw = np.zeros(c * h * w * n + 1, np.float32)
        x = raw[1:].reshape(c, h, w, n) if rng.random() < 0.5 else raw[:-1].reshape(c, h, w, n)
        if rng.random() < 0.3:  # a misaligned float32 view
            x = np.frombuffer(raw.tobytes()[1 : 1 + 4 * x.size], np.float32).reshape(c, h, w, n)
        live = rng.random((o, c, kk, kk)) < 0.5
        oo, cc, ky, kx = np.nonzero(live)
        syn_ptr = np.concatenate([[0], np.cumsum(np.bincount(oo, minlength=o))]).astype(np.int32)
        off = ((cc * h + ky) * w + kx).astype(np.int32)
        if rng.random() < 0.2 and off.size:
            off[rng.integers(off.size)] = int(rng.choice([-1, c * h * w, 2**31 - 1]))
        wt = rng.standard_normal(off.size).astype(np.float32)
        bias = np.zeros(o, np.float32)
        try:
            ph, pw = (oh, ow) if pool is None else ((oh - pool[0]) // max(pool[1], 1) + 1,
                                                    (ow - pool[0]) // max(pool[1], 1) + 1)
            out = np.zeros((o, max(ph, 0), max(pw, 0), n), np.float32)
        except ValueError:
            out = np.zeros((o, 1, 1, n), np.float32)
        counts["cases"] += 1
        try:
            k.conv(x, syn_ptr, off, wt, (oh, ow), stride, bias, None, pool, bool(rng.random() < .5),
                   out)
            counts["ok"] += 1
        except (ValueError, TypeError):
            counts["refused"] += 1
    return counts


def main(argv) -> int:
    import tempfile
    from pathlib import Path

    seed, cases = int(argv[1]), int(argv[2])
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as d:
        summary = {"loader": fuzz_loader(rng, cases, Path(d)),
                   "entry_points": fuzz_entry_points(rng, cases),
                   "wrapper": fuzz_wrapper(rng, cases)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
