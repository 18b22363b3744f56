"""ResNet-22 for CIFAR-10 from the same switchable layers as the LeNet (METHOD.md section 4).

The paper's "three residual blocks with 16, 64 and 256 filters" is the depth-20 ResNet v2 of the
Keras CIFAR-10 example, which the authors' earlier BM code used: a 3x3 stem conv with 16 filters,
then three stages of two bottleneck blocks each (1x1 -> 3x3 -> 1x1), stage widths
16 -> 64 -> 128 -> 256, a 1x1 projection shortcut in the first block of every stage (stride 2 in
stages 2 and 3), global average pooling and one Linear 256 -> 10. That is 22 convolutions plus
the classifier: 23 switchable layers, in ``net.layers`` in the order they run.

One deliberate difference from Keras: every unit is ``conv -> BN (-> ReLU)`` (post-activation)
instead of ``BN -> ReLU -> conv`` (pre-activation). Each batch norm then directly follows its
conv and folds into it for integer inference. A pre-activation BN sits on the residual sum and
would be a per-channel multiplication in the integer datapath (:mod:`model.reference.resnet`).
The block output is ``ReLU(shortcut + BN(conv_c(...)))``.

Inputs are pixels scaled to ``[0, 1)`` (``pixel / 256``, no mean subtraction), so that every BM
layer's input is non-negative and ``dx = 0``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .nets import SwitchableNet, check_forms

__all__ = ["ResNetConfig", "ResNet22", "Block"]


@dataclass(frozen=True)
class Block:
    """Layer indices of one bottleneck block (``proj`` is ``None`` for an identity shortcut)."""

    a: int
    b: int
    c: int
    proj: int | None
    stride: int


@dataclass
class ResNetConfig:
    """ResNet v2 of depth ``9 * blocks + 2`` with bottlenecks; defaults give ResNet-22."""

    name: str = "resnet22"
    in_ch: int = 3
    in_hw: int = 32
    stem: int = 16
    blocks: int = 2  # per stage
    n_classes: int = 10
    forms: tuple[str, ...] = ()  # one per layer; empty means all classical
    op: str = "max"
    alpha: float = 1.0
    learn_alpha: bool = False
    dx: float = 0.0
    learn_corr: bool = False

    def __post_init__(self):
        self.forms = check_forms(self.forms, self.n_layers)

    @property
    def n_convs(self) -> int:
        return 1 + 3 * (3 * self.blocks + 1)

    @property
    def n_layers(self) -> int:
        return self.n_convs + 1

    def to_dict(self) -> dict:
        return asdict(self)


class ResNet22(SwitchableNet):
    """``layers[0]`` the stem, then per block ``a, b, c`` (and ``proj``), ``layers[-1]`` the FC.

    ``bns[i]`` is the batch norm after conv ``i``. :attr:`plan` lists the blocks.
    """

    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_ch, cfg.stem, 3, padding=1, bias=False)]
        plan: list[Block] = []
        c_in = cfg.stem
        for stage in range(3):
            c_out = c_in * 4 if stage == 0 else c_in * 2
            mid = c_in
            for blk in range(cfg.blocks):
                stride = 2 if stage > 0 and blk == 0 else 1
                src = c_in if blk == 0 else c_out
                i = len(layers)
                layers += [
                    nn.Conv2d(src, mid, 1, stride=stride, bias=False),
                    nn.Conv2d(mid, mid, 3, padding=1, bias=False),
                    nn.Conv2d(mid, c_out, 1, bias=False),
                ]
                proj = None
                if blk == 0:
                    proj = len(layers)
                    layers.append(nn.Conv2d(src, c_out, 1, stride=stride, bias=False))
                plan.append(Block(i, i + 1, i + 2, proj, stride))
            c_in = c_out
        self.n_convs = len(layers)
        assert self.n_convs == cfg.n_convs
        layers.append(nn.Linear(c_in, cfg.n_classes))
        self.layers = nn.ModuleList(layers)
        self.bns = nn.ModuleList(nn.BatchNorm2d(m.out_channels) for m in layers[:-1])
        self.plan = plan
        for i, form in enumerate(cfg.forms):
            if form != "classical":
                self.convert_layer(i, form)

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *, taps: bool = False):
        """Logits; with ``taps=True`` also a dict ``{layer index: its BN output}`` (pre-ReLU)."""
        seen: dict[int, torch.Tensor] = {}

        def u(i, h, relu=True):
            y = self.bns[i](self.layers[i](h))
            if taps:
                seen[i] = y
            return F.relu(y) if relu else y

        h = u(0, x)
        for blk in self.plan:
            y = u(blk.c, u(blk.b, u(blk.a, h)), relu=False)
            sc = h if blk.proj is None else u(blk.proj, h, relu=False)
            h = F.relu(sc + y)
        h = h.mean((2, 3))
        out = self.layers[-1](h)
        if taps:
            seen[len(self.layers) - 1] = out
            return out, seen
        return out
