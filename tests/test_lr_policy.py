"""The ``linear`` learning-rate policy: the rate falls to zero over the training run.

Wrong implementations these tests catch: a schedule that does not reach zero at the run's last
update (a total counted in epochs instead of updates, or the whole lineage's length instead of
one generation's), a lineage that keeps Caffe's inv for its offspring, and a policy name that
is accepted without a check and fails deep in a run.
"""

from __future__ import annotations

import pytest

from minievo import models, optim
from minievo.evolution import report
from minievo.evolution.lineage import EvolutionConfig, Lineage
from minievo.experiment import UsageError, make_optimizer
from minievo.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential

CFG = {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}


def test_linear_falls_to_zero_at_the_last_update_of_the_run():
    model = Linear(3, 2)
    opt, sched = make_optimizer(model, dict(CFG, lr_policy="linear"), total_iterations=5)
    assert isinstance(sched, optim.LinearDecayLR)
    assert [sched.lr_at(i) for i in range(7)] == pytest.approx([0.1, 0.08, 0.06, 0.04, 0.02,
                                                                0.0, 0.0])
    with pytest.raises(UsageError, match="needs the length"):
        make_optimizer(model, dict(CFG, lr_policy="linear"))
    with pytest.raises(ValueError, match="total"):
        optim.LinearDecayLR(opt, total=0)
    _, inv = make_optimizer(model, dict(CFG, lr_policy="inv"), total_iterations=5)
    assert isinstance(inv, optim.InvLR)


def test_an_unknown_policy_is_refused_when_the_lineage_is_configured():
    with pytest.raises(UsageError, match=r"--lr-policy 'cosine'.*linear"):
        EvolutionConfig(model="lenet5", dataset="mnist", lr_policy="cosine")


def _tiny() -> Sequential:
    return Sequential(Conv2d(1, 4, 5), MaxPool2d(2), ReLU(), Flatten(), Linear(576, 10))


def test_each_generation_of_a_lineage_anneals_over_its_own_updates(tmp_path, monkeypatch):
    monkeypatch.setitem(models.MODELS, "tiny", _tiny)
    monkeypatch.setitem(models.INPUT_SHAPES, "tiny", (1, 28, 28))
    monkeypatch.setattr(report, "plot_lineage", lambda out, rows, masks=None: [])
    made = []
    real = optim.LinearDecayLR

    class Spy(real):
        def __init__(self, opt, total):
            super().__init__(opt, total)
            made.append(self)

    monkeypatch.setattr(optim, "LinearDecayLR", Spy)
    cfg = EvolutionConfig(model="tiny", dataset="synthetic-digits", generations=2,
                          ancestor_epochs=2, offspring_epochs=1, batch_size=32, lr=0.05,
                          limit_train=160, limit_test=64, lr_policy="linear")
    lin = Lineage(cfg, tmp_path / "run", progress=False, log=lambda line: None)
    lin.run()
    batches = len(lin.loaders[0])
    # the ancestor over its 2 epochs, each offspring over its 1
    assert [s.total for s in made] == [2 * batches, batches, batches]
    for s in made:   # each optimiser ran exactly its schedule's updates: the rate ends at 0
        assert s.opt.iterations == s.total
        assert s.opt.lr == pytest.approx(s.lr_at(s.total - 1))
        assert s.lr_at(s.total) == 0.0
