"""fit / evaluate: learning, history, the NaN guard, checkpoints and bit-exact resume."""

from __future__ import annotations

import io

import numpy as np
import pytest

from minievo import backend, init, optim, training
from minievo import checkpoint as ckpt
from minievo import functions as F
from minievo.experiment import TRAIN_DEFAULTS, make_loaders, make_optimizer
from minievo.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential, prunable_layers


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def mlp(seed: int = 0):
    init.manual_seed(seed)
    return Sequential(Flatten(), Linear(784, 32), ReLU(), Linear(32, 10))


def small_convnet(seed: int = 0, pruned: bool = True):
    """conv 4@5x5 -> pool -> linear, with part of its synapses masked (a sparse offspring)."""
    init.manual_seed(seed)
    model = Sequential(Conv2d(1, 4, 5), MaxPool2d(2), ReLU(), Flatten(), Linear(4 * 12 * 12, 10))
    if pruned:
        rng = np.random.default_rng(seed + 1)
        for _, layer in prunable_layers(model):
            layer.set_mask(rng.random(layer.weight.shape) < 0.6)
    return model


def loaders(backend_name, n_train=256, n_test=128, batch_size=32, val_fraction=0.0):
    return make_loaders("synthetic-digits", batch_size, seed=0, limit_train=n_train,
                        limit_test=n_test, val_fraction=val_fraction, backend_name=backend_name)


def weights(model) -> dict:
    return {k: backend.to_numpy(v) for k, v in model.state_dict().items()}


def without_timing(history):
    return [{k: v for k, v in row.items() if k != "train_seconds"} for row in history]


def interrupt_after(optimizer, steps: int):
    """Make ``optimizer.step`` raise KeyboardInterrupt on its call number ``steps + 1``, before
    updating anything: the run is killed after ``steps`` completed updates."""
    real_step = optimizer.step
    calls = [0]

    def step():
        if calls[0] == steps:
            raise KeyboardInterrupt
        calls[0] += 1
        real_step()

    optimizer.step = step


def quiet_fit(*args, **kwargs):
    kwargs.setdefault("progress", False)
    kwargs.setdefault("log", None)
    return training.fit(*args, **kwargs)


# ----------------------------------------------------------------------------------------------
# learning, history, evaluate
# ----------------------------------------------------------------------------------------------
def test_fit_learns_well_above_chance(backend_name):
    train, _, test = loaders(backend_name, n_train=512, n_test=256, batch_size=64)
    model = mlp()
    before = training.evaluate(model, test)["accuracy"]
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    state = quiet_fit(model, train, opt, 8, test_loader=test)  # 64 steps
    after = state.history[-1]["test_accuracy"]
    assert before < 0.3  # ten classes: chance is 0.1
    assert after > 0.7, state.history
    assert state.history[-1]["train_loss"] < 0.5 * state.history[0]["train_loss"]


def test_history_has_one_row_per_epoch(backend_name):
    train, val, test = loaders(backend_name, val_fraction=0.25)
    model = mlp()
    opt, sched = make_optimizer(model, TRAIN_DEFAULTS)
    lines = []
    state = training.fit(model, train, opt, 2, scheduler=sched, val_loader=val,
                         test_loader=test, progress=False, log=lines.append, label="t ")
    assert [r["epoch"] for r in state.history] == [1, 2]
    assert state.epoch == 2 and state.step_in_epoch == 0
    for row in state.history:
        assert set(row) == {"epoch", "train_loss", "train_accuracy", "lr", "train_seconds",
                            "val_loss", "val_accuracy", "test_loss", "test_accuracy"}
        for key in ("train_accuracy", "val_accuracy", "test_accuracy"):
            assert 0 <= row[key] <= 1
        assert row["train_loss"] > 0 and row["train_seconds"] >= 0
    # InvLR: the learning rate decays with the iteration count
    assert state.history[1]["lr"] < state.history[0]["lr"] < TRAIN_DEFAULTS["lr"]
    assert opt.iterations == 2 * len(train)
    assert len(lines) == 2 and lines[0].startswith("t epoch 1") and "test acc" in lines[0]
    # a finished run given back to fit does nothing more
    again = quiet_fit(model, train, opt, 2, state=state)
    assert again.history == state.history and opt.iterations == 2 * len(train)


def test_evaluate_matches_a_manual_count_and_restores_the_mode(backend_name):
    _, _, test = loaders(backend_name, n_test=100)
    model = mlp()
    model.train()
    r = training.evaluate(model, test)
    assert model.training
    assert r["samples"] == 100
    xs, ys = zip(*test.batches())
    x, y = np.concatenate([backend.to_numpy(a) for a in xs]), np.concatenate(
        [backend.to_numpy(a) for a in ys])
    pred = backend.to_numpy(training.predict(model, backend.to_backend(x, backend_name)))
    assert r["accuracy"] == pytest.approx(float((pred == y).mean()))
    # per image, from the same pass: in the loader's order, on the host
    per = training.evaluate(model, test, per_image=True)
    assert isinstance(per["correct"], np.ndarray) and per["correct"].dtype == bool
    np.testing.assert_array_equal(per["correct"], pred == y)
    assert per["accuracy"] == r["accuracy"] and "correct" not in r
    model.eval()
    training.evaluate(model, test)
    assert not model.training


def test_evaluate_and_fit_refuse_empty_loaders():
    model = mlp()
    with pytest.raises(ValueError, match="no samples"):
        training.evaluate(model, [])
    with pytest.raises(ValueError, match="no batches"):
        training.fit(model, [], optim.SGD(model.parameters()), 1, progress=False)


def test_fit_accepts_a_plain_list_of_batches():
    train, _, _ = loaders("numpy", n_train=64)
    batches = list(train.batches(0))
    model = mlp()
    state = quiet_fit(model, batches, optim.SGD(model.parameters(), lr=0.05), 2)
    assert len(state.history) == 2


def test_progress_bar_on_a_pipe_prints_every_tenth():
    stream = io.StringIO()
    bar = training.ProgressBar(50, "epoch 1/1", stream=stream)
    for _ in range(50):
        bar.update(loss=0.5)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert 10 <= len(lines) <= 12
    assert lines[-1].startswith("epoch 1/1 [########################] 50/50 loss 0.5")


# ----------------------------------------------------------------------------------------------
# the NaN guard
# ----------------------------------------------------------------------------------------------
def nan_loss_at(monkeypatch, call: int):
    """Make the training loss NaN on its call number ``call`` (1-based) from now on."""
    real = F.softmax_cross_entropy
    calls = [0]

    def loss(logits, labels, **kwargs):
        calls[0] += 1
        out = real(logits, labels, **kwargs)
        if calls[0] == call:
            out.data = out.data * float("nan")
        return out

    monkeypatch.setattr(F, "softmax_cross_entropy", loss)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, backend_name):
    train, _, _ = loaders(backend_name)
    path = tmp_path / "train.npz"
    model = mlp()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    state = quiet_fit(model, train, opt, 1, checkpoint_path=path)
    good = path.read_bytes()

    nan_loss_at(monkeypatch, 3)  # the third batch of epoch 2
    with pytest.raises(training.TrainingDiverged) as info:
        quiet_fit(model, train, opt, 2, checkpoint_path=path, state=state)
    message = str(info.value)
    assert "loss became nan at epoch 2, batch 3" in message
    assert str(path) in message and "smaller learning rate" in message
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["train.npz"]


def test_nan_loss_with_per_step_checkpoints_keeps_the_step_before(tmp_path, monkeypatch):
    train, _, _ = loaders("numpy")
    path = tmp_path / "train.npz"
    model = mlp()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    snapshots = []
    real_step = opt.step

    def step():
        real_step()
        snapshots.append(weights(model))

    opt.step = step
    nan_loss_at(monkeypatch, 5)
    with pytest.raises(training.TrainingDiverged, match="epoch 1, batch 5"):
        quiet_fit(model, train, opt, 1, checkpoint_path=path, checkpoint_seconds=0)
    assert len(snapshots) == 4
    fresh = mlp(seed=1)
    state, _ = training.load_training_checkpoint(path, fresh, optim.SGD(fresh.parameters()))
    assert (state.epoch, state.step_in_epoch, state.seen) == (0, 4, 4 * 32)
    for k, v in weights(fresh).items():
        np.testing.assert_array_equal(v, snapshots[-1][k])


def test_weights_overflowing_to_nan_are_never_checkpointed(tmp_path):
    """An update can turn the weights into NaN while the loss before it was finite."""
    train, _, _ = loaders("numpy")
    path = tmp_path / "train.npz"
    model = mlp()
    opt = optim.SGD(model.parameters(), lr=0.05)
    real_step = opt.step
    calls = [0]

    def step():
        real_step()
        calls[0] += 1
        if calls[0] == 3:
            model.layers[1].weight.data[0, 0] = np.inf

    opt.step = step
    with pytest.raises(training.TrainingDiverged, match="weights became NaN or infinite"):
        quiet_fit(model, train, opt, 1, checkpoint_path=path, checkpoint_seconds=0)
    arrays, meta = ckpt.load(path)
    assert meta["fit_state"]["step_in_epoch"] == 2
    assert all(np.isfinite(a).all() for a in arrays.values())


def test_a_huge_learning_rate_diverges_with_a_clear_error(tmp_path):
    train, _, _ = loaders("numpy")
    path = tmp_path / "train.npz"
    model = mlp()
    opt = optim.SGD(model.parameters(), lr=1e8, momentum=0.9)
    with np.errstate(all="ignore"), pytest.raises(training.TrainingDiverged,
                                                  match="smaller learning rate"):
        quiet_fit(model, train, opt, 5, checkpoint_path=path, checkpoint_seconds=0)
    if path.exists():  # whatever was saved is loadable and finite
        arrays, _ = ckpt.load(path)
        assert all(np.isfinite(a).all() for a in arrays.values())


# ----------------------------------------------------------------------------------------------
# checkpoints and resume
# ----------------------------------------------------------------------------------------------
def test_checkpoint_of_another_model_is_refused(tmp_path):
    train, _, _ = loaders("numpy", n_train=64)
    path = tmp_path / "train.npz"
    model = mlp()
    opt = optim.SGD(model.parameters(), lr=0.01)
    quiet_fit(model, train, opt, 1, checkpoint_path=path)
    other = small_convnet()
    with pytest.raises(ckpt.CheckpointError, match=r"train\.npz.*another model"):
        training.load_training_checkpoint(path, other, optim.SGD(other.parameters()))


def _resumable_run(backend_name, epochs, path=None, interrupt_at=None, state=None,
                   model_from=None):
    """A fresh process's worth of objects (model, loaders, optimiser, schedule) and a fit.

    With ``path`` and a checkpoint there, the run resumes from it first, as the CLI does."""
    train, val, test = loaders(backend_name, n_train=200, n_test=64, batch_size=32,
                               val_fraction=0.2)
    model = small_convnet()
    cfg = dict(TRAIN_DEFAULTS, lr=0.02)  # SGD + momentum + weight decay + the "inv" schedule
    opt, sched = make_optimizer(model, cfg)
    if path is not None and path.exists():
        state, _ = training.load_training_checkpoint(path, model, opt)
    if interrupt_at is not None:
        interrupt_after(opt, interrupt_at - (opt.iterations if state else 0))
    state = quiet_fit(model, train, opt, epochs, scheduler=sched, val_loader=val,
                      test_loader=test, checkpoint_path=path, checkpoint_seconds=0,
                      state=state)
    return model, opt, state


# 5 batches per epoch: kill in epoch 1, exactly at the end of epoch 1, in epoch 2, then twice
@pytest.mark.parametrize("kills", [(3,), (5,), (7,), (2, 8)], ids=str)
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, backend_name, kills):
    epochs = 3
    ref_model, ref_opt, ref_state = _resumable_run(backend_name, epochs)

    path = tmp_path / "train.npz"
    for k in kills:
        with pytest.raises(KeyboardInterrupt):
            _resumable_run(backend_name, epochs, path=path, interrupt_at=k)
        _, meta = ckpt.load(path)
        fs = meta["fit_state"]
        assert fs["epoch"] * 5 + fs["step_in_epoch"] == k  # checkpointed after every step
    model, opt, state = _resumable_run(backend_name, epochs, path=path)

    assert opt.iterations == ref_opt.iterations == epochs * 5
    assert opt.lr == ref_opt.lr
    exact = backend_name == "numpy"
    history, ref_history = without_timing(state.history), without_timing(ref_state.history)
    if exact:
        assert history == ref_history
    else:
        assert history == [pytest.approx(row, abs=1e-6) for row in ref_history]
    ref_w, w = weights(ref_model), weights(model)
    assert set(w) == set(ref_w)
    for k in ref_w:
        if exact:
            np.testing.assert_array_equal(w[k], ref_w[k], err_msg=k)
        else:
            np.testing.assert_allclose(w[k], ref_w[k], rtol=0, atol=1e-6, err_msg=k)
    ref_o, o = ref_opt.state_dict(), opt.state_dict()
    assert set(o) == set(ref_o)
    for k in ref_o:
        if hasattr(ref_o[k], "shape"):
            np.testing.assert_allclose(o[k], ref_o[k], rtol=0, atol=0 if exact else 1e-6)
    # masked synapses (the conv's and the linear's) stayed exactly zero through it all
    for _, layer in prunable_layers(model):
        w_np, m_np = backend.to_numpy(layer.weight.data), backend.to_numpy(layer.mask)
        assert (m_np == 0).any() and np.all(w_np[m_np == 0] == 0)
