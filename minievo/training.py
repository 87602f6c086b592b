"""Training and evaluation loops with a progress bar, history, checkpoints and resume.

``fit`` is deliberately plain: for each batch, forward, loss, backward, optimiser step. What it
adds is what a long run needs:

* a progress bar (images/s, loss, time left) on stderr;
* a checkpoint (model, optimiser, history, position in the epoch) written atomically at the end
  of every epoch and every ``checkpoint_seconds`` inside one, so a run killed at any moment
  restarts from where it was with the same command;
* a NaN/inf guard: training stops with :class:`TrainingDiverged` and the last good checkpoint is
  left untouched.

On a GPU nothing in the loop waits for the device between the points where a figure is
needed on the host: the running loss and accuracy stay on the device (:class:`RunningSums`)
until the progress bar redraws, a checkpoint is written or the epoch ends, and the labels of a
DataLoader are checked once, not per batch. A NaN loss is still reported with its exact batch.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from minievo import backend
from minievo import checkpoint as ckpt
from minievo import functions as F
from minievo.autograd import Tensor, no_grad
from minievo.backend import get_array_module, to_numpy


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class ProgressBar:
    """A one-line text progress bar: ``label [#####.....] 512/938 loss 0.12 3120 img/s 0:12``.

    Redrawn in place on a terminal (at most every ``redraw_seconds``); on a pipe or a log file
    it prints a line every 10%.
    """

    def __init__(self, total: int, label: str = "", enabled: bool = True, stream=None,
                 width: int = 24, redraw_seconds: float = 0.1):
        self.total, self.label, self.enabled = max(int(total), 1), label, enabled
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self.done = 0
        self._last_decile = -1
        self.redraw_seconds = redraw_seconds
        self._last_draw = -math.inf

    def due(self, n: int = 1) -> bool:
        """Whether ``update(n)`` will draw (so the caller knows when fresh figures are needed)."""
        if not self.enabled:
            return False
        done = self.done + n
        if done >= self.total:
            return True
        if self.tty:
            return time.perf_counter() - self._last_draw >= self.redraw_seconds
        return 10 * done // self.total != self._last_decile

    def update(self, n: int = 1, draw: bool | None = None, **info) -> None:
        """Advance by ``n`` and redraw when due; ``draw``: the caller's :meth:`due` answer."""
        draw = self.due(n) if draw is None else draw
        self.done += n
        if not draw:
            return
        self._last_decile = 10 * self.done // self.total
        self._last_draw = time.perf_counter()
        elapsed = time.perf_counter() - self.start
        frac = min(self.done / self.total, 1.0)
        filled = int(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        left = elapsed / frac - elapsed if frac > 0 else 0.0
        extras = " ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items()
        )
        line = (f"{self.label} [{bar}] {self.done}/{self.total} {extras} "
                f"{_clock(elapsed)}<{_clock(left)}")
        if self.tty:
            self.stream.write("\r" + line.ljust(100)[:160])
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self.done < self.total:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def accuracy_count(logits, labels) -> int:
    """Number of rows whose arg-max equals the label."""
    return int((logits.argmax(axis=1) == labels).sum())


class RunningSums:
    """Loss sum, correct predictions and the first non-finite loss of the batches added since
    the last :meth:`read`, kept where the arrays live (device scalars on a GPU).

    :meth:`add` launches a few tiny kernels on a GPU but never waits for it; :meth:`read` is
    the one host read (a sync) that brings all the figures back. The loss is summed in
    float64, so the sums do not depend on how often they are read.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._loss = self._correct = self._bad_step = self._bad_value = None
        self.batches = 0

    def add(self, loss, logits, labels, step: int) -> None:
        """One batch: its mean ``loss`` (0-d array), ``logits`` (N, K), ``labels`` (N,), and
        its index ``step`` (reported when its loss is the first NaN or inf)."""
        xp = get_array_module(loss)
        value = loss.astype(xp.float64)
        hit = (logits.argmax(axis=1) == labels).sum()
        bad = ~xp.isfinite(value)
        weighted = value * labels.shape[0]
        if self._loss is None:
            self._loss, self._correct = weighted, hit
            self._bad_step, self._bad_value = xp.where(bad, step, -1), value
        else:
            first = bad & (self._bad_step < 0)
            self._bad_step = xp.where(first, step, self._bad_step)
            self._bad_value = xp.where(first, value, self._bad_value)
            self._loss = self._loss + weighted
            self._correct = self._correct + hit
        self.batches += 1

    def read(self) -> tuple[float, int, int | None, float | None]:
        """(loss sum, correct, index of the first batch whose loss was not finite or None, that
        loss) in one host read; the sums start over."""
        if self._loss is None:
            return 0.0, 0, None, None
        xp = get_array_module(self._loss)
        loss, correct, bad_step, bad_value = xp.stack([
            self._loss, self._correct.astype(xp.float64), self._bad_step.astype(xp.float64),
            self._bad_value]).tolist()
        self.reset()
        if bad_step < 0:
            return loss, int(correct), None, None
        return loss, int(correct), int(bad_step), bad_value


def check_labels_once(loader, n_classes: int) -> bool:
    """Check all the labels of ``loader`` against the model's ``n_classes`` once (a DataLoader
    knows its label range); True when done, so the loss can skip its per-batch check (a
    device sync on a GPU), False for loaders that cannot tell (then the loss checks)."""
    label_range = getattr(loader, "label_range", None)
    if label_range is None:
        return False
    lo, hi = label_range()
    if hi >= lo and (lo < 0 or hi >= n_classes):
        raise ValueError(f"cross-entropy: labels must lie in [0, {n_classes}), got {lo}..{hi}")
    return True


def _loss(out, y, loader, checked: bool):
    """(loss, whether the loader's labels are checked now), checking them on the first call."""
    if not checked and out.ndim == 2:
        checked = check_labels_once(loader, out.shape[1])
    return F.softmax_cross_entropy(out, y, check_labels=not checked), checked


def evaluate(model, loader, progress: bool = False, per_image: bool = False) -> dict:
    """Mean loss and accuracy of ``model`` over ``loader`` (eval mode, no graph; on a GPU one
    host read at the end). ``per_image`` adds ``"correct"``: (n,) bool NumPy array, whether
    each sample (in the loader's order) is classified right, from the same forward pass."""
    was_training = model.training
    model.eval()
    total = 0
    hits = []
    sums = RunningSums()
    checked = False
    bar = ProgressBar(len(loader), "eval", enabled=progress)
    try:
        with no_grad():
            for i, (x, y) in enumerate(loader):
                out = model(Tensor(x))
                loss, checked = _loss(out, y, loader, checked)
                sums.add(loss.data, out.data, y, i)
                if per_image:
                    hits.append(out.data.argmax(axis=1) == y)
                total += len(y)
                bar.update()
    finally:
        bar.close()
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    loss_sum, correct, _, _ = sums.read()
    result = {"loss": loss_sum / total, "accuracy": correct / total, "samples": total}
    if per_image:
        xp = get_array_module(hits[0])
        result["correct"] = to_numpy(xp.concatenate(hits)).astype(bool)
    return result


@dataclass
class FitState:
    """Where a run is: the next epoch to run, the batch inside it, and the history so far."""

    epoch: int = 0
    step_in_epoch: int = 0
    history: list = field(default_factory=list)
    train_seconds: float = 0.0
    # Running sums of the epoch under way (so a resumed epoch reports the whole epoch).
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0


def save_training_checkpoint(path, model, optimizer, state: FitState, meta: dict | None = None):
    """Model, optimiser and FitState in one atomic .npz."""
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    arrays.update({f"optim/{k}": v for k, v in opt_state.items() if hasattr(v, "shape")})
    info = dict(meta or {})
    info["fit_state"] = {
        "epoch": state.epoch, "step_in_epoch": state.step_in_epoch, "history": state.history,
        "train_seconds": state.train_seconds, "loss_sum": state.loss_sum,
        "correct": state.correct, "seen": state.seen,
    }
    info["optim_scalars"] = {k: v for k, v in opt_state.items() if not hasattr(v, "shape")}
    ckpt.save(path, arrays, info)


def load_training_checkpoint(path, model, optimizer=None) -> tuple[FitState, dict]:
    """Restore model (and optimiser) from ``path``; returns (FitState, meta)."""
    arrays, meta = ckpt.load(path, expected={f"model/{k}": v.shape
                                             for k, v in model.state_dict().items()})
    model_state = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    try:
        model.load_state_dict(model_state)
    except (KeyError, ValueError) as exc:
        raise ckpt.CheckpointError(f"{path}: checkpoint is for another model: {exc}") from exc
    if optimizer is not None:
        opt_state = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
        scalars = meta.get("optim_scalars", {})
        if not isinstance(scalars, dict) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in scalars.values()):
            raise ckpt.CheckpointError(f"{path}: optim_scalars must map names to finite numbers")
        opt_state.update(scalars)
        if "lr" in opt_state:
            try:
                optimizer.load_state_dict(opt_state)
            except (KeyError, ValueError, TypeError) as exc:
                raise ckpt.CheckpointError(f"{path}: optimiser state does not fit: {exc}"
                                           ) from None
    fs = meta.get("fit_state", {})
    _check_fit_state(path, fs)
    state = FitState(**{k: fs[k] for k in FitState.__dataclass_fields__ if k in fs})
    return state, meta


def _check_fit_state(path, fs) -> None:
    """The checkpoint's FitState: counts are integers >= 0, sums finite, history a list."""
    if not isinstance(fs, dict):
        raise ckpt.CheckpointError(f"{path}: fit_state is not a JSON object")
    for key in ("epoch", "step_in_epoch", "correct", "seen"):
        v = fs.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ckpt.CheckpointError(f"{path}: fit_state {key} = {v!r} must be an integer "
                                       ">= 0")
    for key in ("train_seconds", "loss_sum"):
        v = fs.get(key, 0.0)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise ckpt.CheckpointError(f"{path}: fit_state {key} = {v!r} must be a finite "
                                       "number >= 0")
    history = fs.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history) or (
            len(history) != fs.get("epoch", 0)):
        raise ckpt.CheckpointError(f"{path}: fit_state history must hold one object per "
                                   f"finished epoch ({fs.get('epoch', 0)})")


def fit(model, train_loader, optimizer, epochs: int, *, scheduler=None, test_loader=None,
        val_loader=None, checkpoint_path=None, checkpoint_seconds: float = 120.0,
        state: FitState | None = None, meta: dict | None = None, progress: bool = True,
        log=print, label: str = "", sync_every: int | None = None) -> FitState:
    """Train ``model`` for ``epochs`` epochs (counting those already in ``state``).

    Args:
        model: a Module; its masks are respected by the optimiser.
        train_loader: yields (x, y) arrays; ``set_epoch(e)`` is called when it has one, so
            the shuffling of epoch e is the same whether or not the run was resumed.
        optimizer: an :class:`minievo.optim.Optimizer` over the model's parameters.
        epochs: the total number of epochs the run should have when it returns.
        scheduler: optional LR schedule with ``step()`` (called before every update).
        test_loader / val_loader: evaluated after every epoch, recorded in the history.
        checkpoint_path: where to save (atomically) after every epoch and every
            ``checkpoint_seconds`` within one; None disables checkpoints.
        state: a FitState to resume from (see :func:`load_training_checkpoint`).
        sync_every: how often the running loss and accuracy are read on the host (each read
            waits for a GPU). None: every batch for NumPy arrays (free there: a NaN loss stops
            the run before its update), and for CuPy arrays only when the progress bar
            redraws, a checkpoint is written and the epoch ends. 0: only at those points;
            k > 0: also every k batches. A NaN loss is reported with its own batch whenever
            it is read.

    Returns:
        The final FitState; ``state.history`` has one dict per epoch.

    Raises:
        TrainingDiverged: when the loss is NaN or infinite (no checkpoint written after it).
    """
    state = state or FitState()
    n_batches = len(train_loader)
    if n_batches == 0:
        raise ValueError("fit: the training loader has no batches")
    if sync_every is not None and int(sync_every) < 0:
        raise ValueError(f"sync_every must be None or >= 0, got {sync_every}")
    model.train()
    checked = False
    sums = RunningSums()
    while state.epoch < epochs:
        epoch = state.epoch
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        skip = state.step_in_epoch
        bar = ProgressBar(n_batches, f"{label}epoch {epoch + 1}/{epochs}", enabled=progress)
        bar.done = skip
        t0 = time.perf_counter()
        last_save = time.monotonic()
        try:
            if hasattr(train_loader, "batches"):  # resume without building skipped batches
                batches = enumerate(train_loader.batches(epoch, start=skip), start=skip)
            else:
                batches = ((i, b) for i, b in enumerate(train_loader) if i >= skip)
            for i, (x, y) in batches:
                if scheduler is not None:
                    scheduler.step()
                optimizer.zero_grad()
                out = model(Tensor(x))
                loss, checked = _loss(out, y, train_loader, checked)
                sums.add(loss.data, out.data, y, i)
                every = sync_every
                if every is None:
                    every = 0 if backend.is_cupy_array(loss.data) else 1
                if every == 1:  # before the update: a NaN loss never reaches the weights
                    _absorb(state, sums, epoch, checkpoint_path)
                loss.backward()
                optimizer.step()
                state.seen += len(y)
                state.step_in_epoch = i + 1
                checkpoint_due = (checkpoint_path and checkpoint_seconds is not None
                                  and time.monotonic() - last_save > checkpoint_seconds
                                  and state.step_in_epoch < n_batches)
                draw = bar.due()
                if sums.batches and (draw or checkpoint_due or state.step_in_epoch == n_batches
                                     or (every and sums.batches >= every)):
                    _absorb(state, sums, epoch, checkpoint_path)
                bar.update(draw=draw, loss=state.loss_sum / max(state.seen, 1),
                           lr=float(optimizer.lr))
                if checkpoint_due:
                    state.train_seconds += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    _check_finite(model, epoch, i, checkpoint_path)
                    save_training_checkpoint(checkpoint_path, model, optimizer, state, meta)
                    last_save = time.monotonic()
        finally:
            bar.close()
            sums.reset()
        state.train_seconds += time.perf_counter() - t0
        row = {
            "epoch": epoch + 1,
            "train_loss": state.loss_sum / max(state.seen, 1),
            "train_accuracy": state.correct / max(state.seen, 1),
            "lr": float(optimizer.lr),
            "train_seconds": round(state.train_seconds, 3),
        }
        if val_loader is not None:
            r = evaluate(model, val_loader)
            row.update(val_loss=r["loss"], val_accuracy=r["accuracy"])
        if test_loader is not None:
            r = evaluate(model, test_loader)
            row.update(test_loss=r["loss"], test_accuracy=r["accuracy"])
        state.history.append(row)
        state.epoch += 1
        state.step_in_epoch = 0
        state.loss_sum, state.correct, state.seen = 0.0, 0, 0
        if log is not None:
            log(format_row(row, label))
        if checkpoint_path:
            _check_finite(model, epoch, n_batches - 1, checkpoint_path)
            save_training_checkpoint(checkpoint_path, model, optimizer, state, meta)
    return state


def _absorb(state: FitState, sums: RunningSums, epoch: int, checkpoint_path) -> None:
    """Read the running sums (one host read) into ``state``; a NaN or inf loss among them
    stops the run, naming the first batch that had one."""
    loss_sum, correct, bad_step, bad_value = sums.read()
    if bad_step is not None:
        raise _diverged(f"loss became {bad_value}", epoch, bad_step, checkpoint_path)
    state.loss_sum += loss_sum
    state.correct += correct


def _diverged(what: str, epoch: int, batch: int, checkpoint_path) -> TrainingDiverged:
    return TrainingDiverged(
        f"{what} at epoch {epoch + 1}, batch {batch + 1}; stopping. The last good checkpoint "
        "is kept" + (f" at {checkpoint_path}" if checkpoint_path else "")
        + ". Try a smaller learning rate."
    )


def _check_finite(model, epoch: int, batch: int, checkpoint_path) -> None:
    """Refuse to checkpoint NaN/inf weights: an update can overflow while the loss that
    produced it was still finite, and such a checkpoint would replace the last good one."""
    for p in model.parameters():
        if not bool(get_array_module(p.data).isfinite(p.data).all()):
            raise _diverged("the weights became NaN or infinite", epoch, batch, checkpoint_path)


def format_row(row: dict, label: str = "") -> str:
    parts = [f"{label}epoch {row['epoch']}", f"loss {row['train_loss']:.4f}",
             f"train acc {100 * row['train_accuracy']:.2f}%"]
    if "val_accuracy" in row:
        parts.append(f"val acc {100 * row['val_accuracy']:.2f}%")
    if "test_accuracy" in row:
        parts.append(f"test acc {100 * row['test_accuracy']:.2f}%")
    parts.append(f"{row['train_seconds']:.1f}s")
    return "  ".join(parts)


def predict(model, x, batch_size: int = 1000):
    """Class predictions for an array of inputs, in batches, without a graph."""
    xp = get_array_module(x)
    model.eval()
    out = []
    with no_grad():
        for i in range(0, len(x), batch_size):
            out.append(model(Tensor(x[i : i + batch_size])).data.argmax(axis=1))
    return xp.concatenate(out)


def ensure_dir(path) -> Path:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p
