"""Networks built from switchable layers: the paper's LeNet-like net (and ResNet-22).

Every conv/linear layer of a net sits in ``net.layers`` (a ``ModuleList``) and can be replaced
independently by its 4-branch or 1.5-branch BM form (:meth:`LeNet.convert_layer`). Networks are
described by dataclass configurations and built with :func:`create_net`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .layers import BMLayer, convert, layer_form
from .maxops import MaxOp

__all__ = ["SwitchableNet", "LeNetConfig", "LeNet", "NET_CONFIGS", "FORMS"]

FORMS = ("classical", "bm4", "bm15")


def check_forms(forms, n_layers: int) -> tuple[str, ...]:
    """``forms`` as a tuple of one valid neuron type per layer (empty: all classical)."""
    forms = tuple(forms) or ("classical",) * n_layers
    if len(forms) != n_layers:
        raise ValueError(f"forms needs {n_layers} entries, not {len(forms)}")
    for f in forms:
        if f not in FORMS:
            raise ValueError(f"each form must be one of {FORMS}, not {f!r}")
    return forms


@dataclass
class LeNetConfig:
    """The paper's 5-layer LeNet-like network (METHOD.md section 4).

    Five 3x3 valid convolutions (``widths`` filters), ReLU after each, then one Linear layer
    ``widths[-1] * (in_hw - 2*5)**2 -> n_classes``. ``forms`` gives each of the six layers' neuron
    type (``"classical"``, ``"bm4"``, ``"bm15"``); the BM fields apply to the BM layers.
    """

    name: str = "lenet"
    in_ch: int = 1
    in_hw: int = 28
    widths: tuple[int, ...] = (32, 16, 16, 16, 16)
    k: int = 3
    n_classes: int = 10
    forms: tuple[str, ...] = ("classical",) * 6
    op: str = "max"
    alpha: float = 1.0
    learn_alpha: bool = False
    dx: float = 0.0
    dw: float = 1.0
    learn_corr: bool = False

    def __post_init__(self):
        self.widths = tuple(self.widths)
        self.forms = check_forms(self.forms, self.n_layers)

    @property
    def n_layers(self) -> int:
        return len(self.widths) + 1

    @property
    def out_hw(self) -> int:
        return self.in_hw - len(self.widths) * (self.k - 1)

    @property
    def fc_in(self) -> int:
        return self.widths[-1] * self.out_hw**2

    def to_dict(self) -> dict:
        return asdict(self)


class SwitchableNet(nn.Module):
    """What every network here shares: ``layers`` (a ``ModuleList`` of conv/linear layers, each
    classical or BM) and a ``cfg`` dataclass with ``forms``, ``op``, ``alpha``, ``learn_alpha``,
    ``dx`` and ``learn_corr``."""

    layers: nn.ModuleList

    def make_op(self, kind: str | None = None, alpha: float | None = None) -> MaxOp:
        c = self.cfg
        return MaxOp(
            kind or c.op, alpha=c.alpha if alpha is None else alpha, learnable=c.learn_alpha
        )

    def convert_layer(self, i: int, form: str, *, src: nn.Module | None = None, **kw) -> nn.Module:
        """Replace layer ``i`` by ``form``, converted from ``src`` (default: the layer itself)."""
        c = self.cfg
        src = self.layers[i] if src is None else src
        if form == "bm15":
            kw.setdefault("dx", c.dx)
            kw.setdefault("learn_corr", c.learn_corr)
        if form != "classical":
            kw.setdefault("op", self.make_op())
        new = convert(src, form, **kw).to(src.weight.device)
        self.layers[i] = new
        forms = list(c.forms)
        forms[i] = form
        self.cfg = replace(c, forms=tuple(forms))
        return new

    @property
    def forms(self) -> tuple[str, ...]:
        return tuple(layer_form(m) for m in self.layers)

    def bm_layers(self) -> list[BMLayer]:
        return [m for m in self.layers if isinstance(m, BMLayer)]


class LeNet(SwitchableNet):
    """The paper's LeNet: ``layers[0..4]`` convs with ReLU, ``layers[5]`` the classifier."""

    def __init__(self, cfg: LeNetConfig):
        super().__init__()
        self.cfg = cfg
        chans = (cfg.in_ch,) + cfg.widths
        layers: list[nn.Module] = [
            nn.Conv2d(chans[i], chans[i + 1], cfg.k) for i in range(len(cfg.widths))
        ]
        layers.append(nn.Linear(cfg.fc_in, cfg.n_classes))
        self.layers = nn.ModuleList(layers)
        for i, form in enumerate(cfg.forms):
            if form != "classical":
                self.convert_layer(i, form)

    def run_layer(self, i: int, h: torch.Tensor, *, pre: bool = False) -> torch.Tensor:
        """Layer ``i`` on its input ``h`` (flattening before the classifier), ReLU unless last."""
        if i == len(self.layers) - 1:
            h = h.flatten(1)
        y = self.layers[i](h)
        if pre or i == len(self.layers) - 1:
            return y
        return F.relu(y)

    def run(self, h: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Layers ``start .. stop-1`` on ``h`` (the input of layer ``start``)."""
        stop = len(self.layers) if stop is None else stop
        for i in range(start, stop):
            h = self.run_layer(i, h)
        return h

    def features(self, x: torch.Tensor, *, pre: bool = False) -> list[torch.Tensor]:
        """Every layer's output (post-ReLU, or before the ReLU with ``pre``; logits last)."""
        outs = []
        for i in range(len(self.layers)):
            y = self.run_layer(i, x, pre=True)
            x = y if i == len(self.layers) - 1 else F.relu(y)
            outs.append(y if pre else x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)


NET_CONFIGS: dict[str, object] = {
    "lenet": LeNetConfig(),
    "lenet-bm15": LeNetConfig(forms=("bm15",) * 6),
    "lenet-bm4": LeNetConfig(forms=("bm4",) * 6),
    # board-sized variants (hw/boards/platforms.py): the same shape with fewer channels
    "lenet-w4": LeNetConfig(name="lenet-w4", widths=(4, 4, 4, 4, 4)),
    "lenet-w4n1": LeNetConfig(name="lenet-w4n1", widths=(4, 4, 4, 4, 1)),
}
