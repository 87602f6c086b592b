"""Reference architectures: the paper's LeNets, a small CIFAR net, and the CIFAR ResNets."""

from __future__ import annotations

from minievo import functions as F
from minievo.layers import (
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    GlobalAvgPool2d,
    Linear,
    MaxPool2d,
    Module,
    ReLU,
    Sequential,
)


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


class BasicBlock(Module):
    """The residual block of He et al. 2016: two 3x3 convolutions with batch norm, added to a
    shortcut, then ReLU.

    The shortcut is the identity when the shape stays, else a 1x1 convolution of the given
    stride with batch norm (a projection). The forward is ordinary Python: the addition is a
    plain ``+``, which :mod:`minievo.graph` sees as a residual merge.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = BatchNorm2d(out_channels)
        self.relu1 = ReLU()
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = BatchNorm2d(out_channels)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = Sequential(
                Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                BatchNorm2d(out_channels))

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity)


class ResNet(Module):
    """The CIFAR ResNet of He et al. 2016 (section 4.2), depth 6n + 2.

    conv 3x3 (16) -> BN -> ReLU -> three stages of n basic blocks with 16, 32 and 64 channels
    (stride 2 at the start of the second and third) -> global average pool -> linear. The
    global pool makes the net fit any input size: 3x32x32 (CIFAR-10) or 1x28x28 ((Fashion-)MNIST).
    """

    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or \
                (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6n + 2 with n >= 1 (8, 14, 20, 32, 44, "
                             f"56, ...), got {depth!r}")
        n = (depth - 2) // 6
        self.depth = depth
        self.stem = Sequential(Conv2d(in_channels, 16, 3, padding=1, bias=False),
                               BatchNorm2d(16), ReLU())
        blocks, channels = [], 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, width, stride))
                channels = width
        self.blocks = Sequential(*blocks)
        self.pool = GlobalAvgPool2d()
        self.fc = Linear(64, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.blocks(self.stem(x))))

    def __repr__(self):
        return f"ResNet(depth={self.depth})"


def resnet8(in_channels: int = 3, num_classes: int = 10) -> ResNet:
    """ResNet-8 (n = 1): 77,360 synapses for 3 input channels."""
    return ResNet(8, in_channels, num_classes)


def resnet20(in_channels: int = 3, num_classes: int = 10) -> ResNet:
    """ResNet-20 (n = 3), He et al.'s smallest CIFAR ResNet."""
    return ResNet(20, in_channels, num_classes)


def resnet56(in_channels: int = 3, num_classes: int = 10) -> ResNet:
    """ResNet-56 (n = 9), as evolved by Shafiee, Barshan and Wong (arXiv:1704.02081)."""
    return ResNet(56, in_channels, num_classes)


MODELS = {"lenet5": lenet5, "lenet300_100": lenet300_100, "cifar_net": cifar_net,
          "resnet8": resnet8, "resnet20": resnet20, "resnet56": resnet56}
#: The input each model is built for; the ResNets take any input size (global pooling) and
#: get their input channels from the data (:func:`build`'s ``input_shape``).
INPUT_SHAPES = {"lenet5": (1, 28, 28), "lenet300_100": (1, 28, 28), "cifar_net": (3, 32, 32),
                "resnet8": (3, 32, 32), "resnet20": (3, 32, 32), "resnet56": (3, 32, 32)}
#: Models whose input channels follow the data set.
ANY_INPUT = ("resnet8", "resnet20", "resnet56")


def build(name: str, input_shape: tuple | None = None) -> Module:
    """A model by name; unknown names list the valid ones.

    Args:
        name: a key of :data:`MODELS`.
        input_shape: the data's per-sample shape (C, H, W); the ResNets take their input
            channels from it, the other models must be given their own input shape or None.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    if input_shape is None or tuple(input_shape) == INPUT_SHAPES[name]:
        return MODELS[name]()
    if name in ANY_INPUT and len(input_shape) == 3:
        return MODELS[name](in_channels=int(input_shape[0]))
    raise ValueError(f"model {name!r} is built for inputs {INPUT_SHAPES[name]}, not "
                     f"{tuple(input_shape)}")


def input_shape_for(name: str, data_shape: tuple) -> tuple:
    """The per-sample input shape model ``name`` runs on for data of ``data_shape``."""
    return tuple(data_shape) if name in ANY_INPUT else INPUT_SHAPES[name]
