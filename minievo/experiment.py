"""Shared pieces of an experiment: data loaders, the optimiser recipe, run directories."""

from __future__ import annotations

import json
from pathlib import Path


class UsageError(Exception):
    """Bad input from the user (a flag, a directory): printed as one line, exit status 2."""


TRAIN_DEFAULTS = {
    # The Caffe LeNet-5 solver: SGD lr 0.01, momentum 0.9, weight decay 5e-4, "inv" policy,
    # batch 64.
    "model": "lenet5", "dataset": "mnist", "epochs": 10, "batch_size": 64, "lr": 0.01,
    "momentum": 0.9, "weight_decay": 5e-4, "lr_policy": "inv", "seed": 0,
}


def make_loaders(dataset: str, batch_size: int, seed: int, data_dir=None, limit_train=None,
                 limit_test=None, val_fraction: float = 0.0, backend_name: str = "numpy"):
    """Train (and optional validation) and test loaders for a named dataset."""
    import data_loaders as dl

    x_train, y_train = dl.load_dataset(dataset, "train", data_dir=data_dir, n=limit_train)
    x_test, y_test = dl.load_dataset(dataset, "test", data_dir=data_dir, n=limit_test)
    info = dl.DATASETS[dl.dataset_name(dataset)]
    norm = (info.mean, info.std)
    val = None
    if val_fraction:
        (x_train, y_train), (x_val, y_val) = dl.split_train_val(x_train, y_train, val_fraction,
                                                                seed=seed)
        val = dl.DataLoader(x_val, y_val, batch_size=1000, shuffle=False, normalize=norm,
                            backend=backend_name)
    train = dl.DataLoader(x_train, y_train, batch_size=batch_size, shuffle=True, seed=seed,
                          normalize=norm, backend=backend_name)
    test = dl.DataLoader(x_test, y_test, batch_size=1000, shuffle=False, normalize=norm,
                         backend=backend_name)
    return train, val, test


def make_optimizer(model, cfg: dict):
    from minievo import optim

    opt = optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                    weight_decay=cfg["weight_decay"])
    policy = cfg.get("lr_policy", "inv")
    if policy == "inv":
        sched = optim.InvLR(opt)
    elif policy == "step":
        sched = optim.StepLR(opt, step_size=cfg.get("step_size", 5000), gamma=0.1)
    elif policy == "fixed":
        sched = None
    else:
        raise UsageError(f"unknown --lr-policy {policy!r}; choose inv, step or fixed")
    return opt, sched


def check_run_dir(out: Path, config: dict, kind: str) -> bool:
    """True when ``out`` holds this same run (resume); error when it holds a different one."""
    cfg_path = out / "config.json"
    if not cfg_path.exists():
        if out.exists() and any(out.iterdir()):
            raise UsageError(f"output directory {out} is not empty and holds no minievo "
                             f"{kind} run; choose another --out")
        return False
    old = json.loads(cfg_path.read_text())
    if old.get("kind") != kind or old.get("config") != config:
        diff = sorted(k for k in set(old.get("config", {})) | set(config)
                      if old.get("config", {}).get(k) != config.get(k))
        raise UsageError(
            f"output directory {out} holds a different {old.get('kind', 'unknown')} run "
            f"(differs in: {', '.join(diff) or 'kind'}); use another --out or delete it"
        )
    return True
