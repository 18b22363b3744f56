"""A float network as stages (conv or linear, ReLU), its float forward, the calibration."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..layers import BM15Layer, BMLayer

__all__ = ["QuantizeError", "Stage", "stages_of", "float_forward", "to_float_input",
           "check_stages", "LayerStats", "calibrate"]


class QuantizeError(ValueError):
    """The float network cannot be mapped onto the integer datapath as asked."""


@dataclass
class Stage:
    """One weighted layer of the float net and what follows it before the next weighted layer."""

    module: nn.Module
    relu: bool = False
    pool: int = 1

    @property
    def bm(self) -> bool:
        return isinstance(self.module, BMLayer)

    @property
    def geometry(self) -> tuple[str, int, int, int]:
        m = self.module
        if isinstance(m, BMLayer):
            return m.kind, m.in_ch, m.out_ch, m.k
        if isinstance(m, nn.Conv2d):
            if m.stride != (1, 1) or m.padding not in ((0, 0), "valid") or m.groups != 1:
                raise QuantizeError("only valid, stride-1, ungrouped convolutions are supported")
            return "conv", m.in_channels, m.out_channels, m.kernel_size[0]
        return "linear", m.in_features, m.out_features, 1


def _leaves(module: nn.Module):
    children = list(module.children())
    if not children or isinstance(module, (BMLayer, nn.Conv2d, nn.Linear)):
        yield module
        return
    for c in children:
        yield from _leaves(c)


def stages_of(net: nn.Module) -> list[Stage]:
    """The chain of weighted layers of a float net.

    A :class:`model.nets.LeNet` (``net.layers`` and ``net.run_layer``) is read directly. Any
    other net is read as a sequence of leaves in registration order.
    Understood leaves: conv / linear (classical or BM), ``ReLU``, ``MaxPool2d`` (non-overlapping),
    ``Flatten``, ``Identity``, ``Dropout``. Anything else raises :class:`QuantizeError`;
    :func:`check_stages` then proves the chain equal to ``net(x)`` on real inputs.
    """
    layers = getattr(net, "layers", None)
    if isinstance(layers, nn.ModuleList) and hasattr(net, "run_layer"):
        # model.nets.LeNet: ReLU after every layer but the last, flatten before the classifier
        stages = [Stage(m, relu=i < len(layers) - 1) for i, m in enumerate(layers)]
        return stages
    stages = []
    for m in _leaves(net):
        if isinstance(m, (BMLayer, nn.Conv2d, nn.Linear)):
            stages.append(Stage(m))
        elif isinstance(m, nn.ReLU):
            if not stages:
                raise QuantizeError("a ReLU before the first weighted layer")
            stages[-1].relu = True
        elif isinstance(m, nn.MaxPool2d):
            k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            stride = m.stride if isinstance(m.stride, int) else m.stride[0]
            if stride != k or m.padding not in (0, (0, 0)):
                raise QuantizeError("only non-overlapping, unpadded max-pools are supported")
            stages[-1].pool = k
        elif isinstance(m, (nn.Flatten, nn.Identity, nn.Dropout)) or type(m) is nn.Module:
            continue
        elif isinstance(m, nn.Module) and not list(m.parameters()) and not list(m.buffers()):
            # parameter-free helper modules (e.g. a MaxOp already reached through its layer)
            raise QuantizeError(f"unsupported layer {type(m).__name__} in the float net")
    if not stages:
        raise QuantizeError("no conv or linear layers found")
    for st in stages[:-1]:
        if not st.relu:
            raise QuantizeError("every hidden layer must end in a ReLU (the integer saturation)")
    if stages[-1].relu or stages[-1].pool != 1:
        raise QuantizeError("the last layer must output raw logits")
    return stages


def _apply(st: Stage, x: torch.Tensor, *, parts: bool = False):
    kind = st.geometry[0]
    if kind == "linear" and x.dim() > 2:
        x = x.flatten(1)
    if isinstance(st.module, BM15Layer):
        z, e, s = st.module(x, return_parts=True)
    else:
        z, e = st.module(x), None
    a = F.relu(z) if st.relu else z
    if st.pool > 1:
        a = F.max_pool2d(a, st.pool)
    return (a, z, e) if parts else a


@torch.no_grad()
def float_forward(stages, x: torch.Tensor) -> torch.Tensor:
    """Run the stage chain on float inputs ``pixel / 256`` ``(B, C, H, W)``."""
    for st in stages:
        x = _apply(st, x)
    return x


def to_float_input(images, pixel_shift: int = 0) -> torch.Tensor:
    """uint8 ``(N, H, W)`` images -> the float net's input ``(N, 1, H, W)``, ``pixel / 256``.

    With ``pixel_shift`` the pixels are first truncated as the integer input is.
    """
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[:, None]
    x = (x.astype(np.int64) >> pixel_shift) << pixel_shift
    return torch.from_numpy(x.astype(np.float32) / 256.0)


@torch.no_grad()
def check_stages(net: nn.Module, stages, x: torch.Tensor, tol: float = 1e-4) -> None:
    """Raise :class:`QuantizeError` unless the stage chain reproduces ``net(x)``."""
    want = net(x)
    got = float_forward(stages, x)
    err = float((want - got).abs().max())
    scale = float(want.abs().max()) + 1e-12
    if err > tol * scale:
        raise QuantizeError(f"the stage chain differs from net(x) by {err:.3g} (scale {scale:.3g})")


@dataclass
class LayerStats:
    act: list = field(default_factory=list)  # subsampled positive activations (hidden layers)
    act_max: float = 0.0
    e_max: float = 0.0  # largest BM branch output
    z_absmax: float = 0.0  # largest |pre-activation|


@torch.no_grad()
def calibrate(stages, images, *, batch: int = 250, sample: int = 20000, seed: int = 0):
    """Float statistics of every layer over calibration images (uint8 ``(N, H, W)``)."""
    rng = np.random.default_rng(seed)
    stats = [LayerStats() for _ in stages]
    for i in range(0, len(images), batch):
        x = to_float_input(images[i : i + batch])
        for st, s in zip(stages, stats, strict=True):
            a, z, e = _apply(st, x, parts=True)
            s.z_absmax = max(s.z_absmax, float(z.abs().max()))
            if e is not None:
                s.e_max = max(s.e_max, float(e.max()))
            if st.relu:
                flat = a.flatten()
                s.act_max = max(s.act_max, float(flat.max()))
                pos = flat[flat > 0].numpy()
                if pos.size:
                    take = min(pos.size, sample)
                    s.act.append(rng.choice(pos, take, replace=False))
            x = a
    return stats
