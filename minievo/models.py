"""Reference architectures."""

from __future__ import annotations

from minievo.layers import Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sequential


def lenet5() -> Sequential:
    """The Caffe LeNet-5 example (docs/method.md#experiment): 430,500 synapses.

    conv 20@5x5 -> maxpool 2 -> conv 50@5x5 -> maxpool 2 -> linear 800->500 -> ReLU ->
    linear 500->10. Input (N, 1, 28, 28).
    """
    return Sequential(
        Conv2d(1, 20, 5), MaxPool2d(2),
        Conv2d(20, 50, 5), MaxPool2d(2),
        Flatten(), Linear(800, 500), ReLU(), Linear(500, 10),
    )


def lenet300_100() -> Sequential:
    """The fully connected LeNet-300-100: 784 -> 300 -> 100 -> 10 (266,200 synapses)."""
    return Sequential(
        Flatten(), Linear(784, 300), ReLU(), Linear(300, 100), ReLU(), Linear(100, 10),
    )


def cifar_net(dropout: float = 0.0) -> Sequential:
    """A small CIFAR-10 convnet: 3x(conv 3x3 + ReLU + pool) then two linear layers."""
    layers = [
        Conv2d(3, 32, 3, padding=1), ReLU(), MaxPool2d(2),
        Conv2d(32, 64, 3, padding=1), ReLU(), MaxPool2d(2),
        Conv2d(64, 128, 3, padding=1), ReLU(), MaxPool2d(2),
        Flatten(), Linear(128 * 4 * 4, 256), ReLU(),
    ]
    if dropout:
        layers.append(Dropout(dropout))
    layers.append(Linear(256, 10))
    return Sequential(*layers)


MODELS = {"lenet5": lenet5, "lenet300_100": lenet300_100, "cifar_net": cifar_net}
INPUT_SHAPES = {"lenet5": (1, 28, 28), "lenet300_100": (1, 28, 28), "cifar_net": (3, 32, 32)}


def build(name: str) -> Sequential:
    """A model by name; unknown names list the valid ones."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name]()
