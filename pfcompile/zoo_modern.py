"""Two small models in the style of current vision networks, for the real-model
suite (:mod:`pfcompile.realmodels`): exported with PyTorch's dynamo exporter
(opset 18+, dynamic batch), whose decompositions differ from the TorchScript
exporter's that :mod:`pfcompile.zoo` uses.

- :class:`MobileNetV3Tiny`: hard-swish activations, inverted residuals with
  squeeze-excitation gated by a hard sigmoid (Howard et al. 2019).
- :class:`AttentionNetTiny`: a patch-embedding transformer (LayerNorm,
  multi-head self-attention as MatMul + Softmax, GELU MLP), ViT-style.

Kept apart from ``zoo.py`` so that the test fixtures keyed by ``zoo.py``'s
source stay cached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttentionNetTiny", "MobileNetV3Tiny"]


def _conv_bn_act(cin: int, cout: int, k: int, s: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.Hardswish) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class _SE(nn.Module):
    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, max(8, c // r), 1)
        self.fc2 = nn.Conv2d(max(8, c // r), c, 1)

    def forward(self, x):
        s = F.hardsigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * s


class _V3Block(nn.Module):
    def __init__(self, cin: int, hid: int, cout: int, k: int, s: int, se: bool) -> None:
        super().__init__()
        self.expand = _conv_bn_act(cin, hid, 1)
        self.dw = _conv_bn_act(hid, hid, k, s, groups=hid)
        self.se = _SE(hid) if se else nn.Identity()
        self.project = _conv_bn_act(hid, cout, 1, act=None)
        self.res = s == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.res else y


class MobileNetV3Tiny(nn.Module):
    """MobileNetV3-style body for 16x16 single-channel inputs."""

    def __init__(self, in_ch: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn_act(in_ch, 16, 3, 1)
        self.blocks = nn.Sequential(
            _V3Block(16, 32, 16, 3, 1, True),
            _V3Block(16, 48, 24, 3, 2, False),
            _V3Block(24, 72, 24, 5, 1, True),
            _V3Block(24, 96, 40, 5, 2, True),
        )
        self.head = _conv_bn_act(40, 96, 1)
        self.fc1 = nn.Linear(96, 64)
        self.fc2 = nn.Linear(64, classes)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc2(F.hardswish(self.fc1(x)))


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        y = att.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class _EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.n1 = nn.LayerNorm(dim)
        self.att = _Attention(dim, heads)
        self.n2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x):
        x = x + self.att(self.n1(x))
        return x + self.mlp(self.n2(x))


class AttentionNetTiny(nn.Module):
    """Patch-embedding transformer for 16x16 inputs: 4x4 patches -> 16 tokens."""

    def __init__(self, in_ch: int = 1, classes: int = 10, dim: int = 32, heads: int = 2,
                 depth: int = 2) -> None:
        super().__init__()
        self.embed = nn.Conv2d(in_ch, dim, 4, 4)
        self.pos = nn.Parameter(torch.zeros(1, 16, dim))
        self.blocks = nn.Sequential(*[_EncoderBlock(dim, heads, 2 * dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        x = self.norm(self.blocks(x))
        return self.fc(x.mean(1))
