"""Model definitions (torch, written here: torchvision does not import beside
torch 2.13 on these machines), the digits data set, a small trainer and ONNX
export. Used by the demo model, the test fixtures and the benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = [
    "DemoNet",
    "DenseNetTiny",
    "FlattenGemmNet",
    "GroupedConvNet",
    "MobileNetV2Tiny",
    "PlainCNN",
    "ResNetTiny",
    "SENetTiny",
    "accuracy",
    "digits_splits",
    "export_onnx",
    "mobilenet_v2",
    "resnet18",
    "resnet20",
    "train_classifier",
]

import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------- data
def digits_splits(size: int = 8, seed: int = 0, n_calib: int = 128):
    """sklearn's 8x8 digits (ships with scikit-learn: no download), scaled to
    [0, 1], normalised, optionally upsampled bilinearly to ``size``x``size``.

    Returns dict with ``x_train, y_train, x_val, y_val, x_calib`` (N,1,size,size)
    float32 and int64 labels; 1,257 train / 540 val, calib drawn from train.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0 - 0.3) / 0.35
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))
    x, y = x[idx], y[idx]
    x = x[:, None]
    if size != 8:
        with torch.no_grad():
            x = F.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear",
                              align_corners=False).numpy()
    n_val = 540
    out = {
        "x_train": np.ascontiguousarray(x[n_val:]), "y_train": y[n_val:],
        "x_val": np.ascontiguousarray(x[:n_val]), "y_val": y[:n_val],
    }
    out["x_calib"] = out["x_train"][:n_calib].copy()
    return out


def train_classifier(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int = 10,
                     lr: float = 0.05, batch: int = 64, seed: int = 0,
                     augment_shift: int = 0) -> nn.Module:
    """Plain SGD + momentum + cosine schedule on CPU; deterministic for a seed."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            b = perm[i:i + batch]
            xb = xt[b]
            if augment_shift:
                dx, dy = torch.randint(-augment_shift, augment_shift + 1, (2,), generator=g).tolist()
                xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(xb), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, ...],
                opset: int = 17, input_name: str = "input", output_name: str = "logits",
                keep_bn: bool = False) -> Path:
    """Export with the TorchScript exporter (no onnxscript needed), static shapes.

    In eval mode the exporter's constant folding folds BatchNorm into Conv;
    ``keep_bn=True`` turns constant folding off so that BatchNormalization
    nodes stay in the graph (it also leaves Identity nodes on parameters).
    """
    model.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(*input_shape)
    torch.onnx.export(model, (dummy,), str(path), opset_version=opset, input_names=[input_name],
                      output_names=[output_name], dynamo=False,
                      do_constant_folding=not keep_bn)
    return path


# ----------------------------------------------------------------------------- blocks
def conv_bn(cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.c1 = conv_bn(cin, cout, 3, stride)
        self.c2 = conv_bn(cout, cout, 3, 1, act=False)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = conv_bn(cin, cout, 1, stride, act=False)

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        return F.relu(self.c2(self.c1(x)) + idt)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, hid, 1))
        layers += [conv_bn(hid, hid, 3, stride, groups=hid), conv_bn(hid, cout, 1, act=False)]
        self.body = nn.Sequential(*layers)
        self.res = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.res else y


# ----------------------------------------------------------------------------- models
class DemoNet(nn.Module):
    """The built-in demo: a small ResNet-style CNN with one depthwise block."""

    def __init__(self, in_ch: int = 1, classes: int = 10, w: int = 16) -> None:
        super().__init__()
        self.stem = conv_bn(in_ch, w, 3)
        self.b1 = BasicBlock(w, w)
        self.b2 = BasicBlock(w, 2 * w, 2)
        self.dw = nn.Sequential(conv_bn(2 * w, 2 * w, 3, 1, groups=2 * w), conv_bn(2 * w, 4 * w, 1))
        self.b3 = BasicBlock(4 * w, 4 * w, 2)
        self.fc = nn.Linear(4 * w, classes)

    def forward(self, x):
        x = self.b3(self.dw(self.b2(self.b1(self.stem(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class _ResNet(nn.Module):
    def __init__(self, stem: nn.Module, stages: list[tuple[int, int, int]], cin: int, classes: int) -> None:
        super().__init__()
        self.stem = stem
        blocks = []
        for cout, n, stride in stages:
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet18(classes: int = 1000, in_ch: int = 3) -> nn.Module:
    """ResNet-18 (He et al. 2016) for 224x224 inputs."""
    stem = nn.Sequential(nn.Conv2d(in_ch, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                         nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
    return _ResNet(stem, [(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)], 64, classes)


def resnet20(classes: int = 10, in_ch: int = 1) -> nn.Module:
    """CIFAR-style ResNet-20 (3 stages x 3 blocks, 16/32/64 channels) for 32x32."""
    return _ResNet(conv_bn(in_ch, 16, 3), [(16, 3, 1), (32, 3, 2), (64, 3, 2)], 16, classes)


class _MobileNetV2(nn.Module):
    def __init__(self, cfg, stem_stride: int, width: int, last: int, in_ch: int, classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(in_ch, width, 3, stem_stride)]
        cin = width
        for t, c, n, s in cfg:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(last, classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def mobilenet_v2(classes: int = 1000, in_ch: int = 3) -> nn.Module:
    """MobileNetV2 (Sandler et al. 2018), width 1.0, for 224x224 inputs."""
    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1)]
    return _MobileNetV2(cfg, 2, 32, 1280, in_ch, classes)


def mobilenet_v2_cifar(classes: int = 10, in_ch: int = 1) -> nn.Module:
    """MobileNetV2-style net for 32x32 inputs (stride-1 stem, fewer stages)."""
    cfg = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 2, 2), (6, 96, 2, 1)]
    return _MobileNetV2(cfg, 1, 32, 320, in_ch, classes)


# --- small topologies for the pass fixtures (8x8 digits unless noted) ---------
class PlainCNN(nn.Module):
    def __init__(self, in_ch: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.f = nn.Sequential(conv_bn(in_ch, 16), conv_bn(16, 32), nn.MaxPool2d(2), conv_bn(32, 32))
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.f(x), 1), 1))


class ResNetTiny(_ResNet):
    """ResNet with downsample shortcuts."""

    def __init__(self, in_ch: int = 1, classes: int = 10) -> None:
        super().__init__(conv_bn(in_ch, 16), [(16, 1, 1), (32, 1, 2), (48, 1, 1)], 16, classes)


class MobileNetV2Tiny(_MobileNetV2):
    """Inverted residuals: depthwise + linear bottleneck + residual."""

    def __init__(self, in_ch: int = 1, classes: int = 10) -> None:
        super().__init__([(1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 1)], 1, 16, 64, in_ch, classes)


class DenseNetTiny(nn.Module):
    """DenseNet-style concatenation."""

    def __init__(self, in_ch: int = 1, classes: int = 10, growth: int = 12) -> None:
        super().__init__()
        self.stem = conv_bn(in_ch, 16)
        self.l1 = conv_bn(16, growth)
        self.l2 = conv_bn(16 + growth, growth)
        self.trans = conv_bn(16 + 2 * growth, 24, 1)
        self.fc = nn.Linear(24, classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.l1(x)], 1)
        x = torch.cat([x, self.l2(x)], 1)
        x = self.trans(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SEBlock(nn.Module):
    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * s


class SENetTiny(nn.Module):
    """Squeeze-excitation (channel-wise Mul broadcast)."""

    def __init__(self, in_ch: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.c1 = conv_bn(in_ch, 16)
        self.c2 = conv_bn(16, 32)
        self.se = SEBlock(32)
        self.c3 = conv_bn(32, 32)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = self.c3(self.se(self.c2(self.c1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class FlattenGemmNet(nn.Module):
    """conv -> Flatten -> Gemm with spatial size > 1 (a channel owns H*W features)."""

    def __init__(self, in_ch: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.f = nn.Sequential(conv_bn(in_ch, 16), conv_bn(16, 24, 3, 2))
        self.fc1 = nn.Linear(24 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, classes)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(torch.flatten(self.f(x), 1))))


class GroupedConvNet(nn.Module):
    """Grouped (not depthwise) convolution."""

    def __init__(self, in_ch: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.c1 = conv_bn(in_ch, 16)
        self.g = conv_bn(16, 32, 3, 1, groups=4)
        self.c3 = conv_bn(32, 32, 1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = self.c3(self.g(self.c1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
