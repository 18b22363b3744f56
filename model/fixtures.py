"""Fixture networks for the RTL tests and the reports: the shipped exports, and the paper
LeNet with seeded random integer tensors (same shapes and ranges, no training needed) for
structure-only checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.params import BMParams, LayerSpec

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "model" / "weights"
SHIPPED = {"bm": WEIGHTS / "lenet_bm15_max.npz", "mac": WEIGHTS / "lenet_mac8.npz"}

__all__ = ["SHIPPED", "lenet_layers", "random_tensors"]


def lenet_layers() -> list[LayerSpec]:
    """The paper LeNet: five 3x3 valid convolutions (32, 16, 16, 16, 16), Linear 5184 -> 10."""
    shapes = [(1, 32), (32, 16), (16, 16), (16, 16), (16, 16)]
    layers = [LayerSpec("conv", a, b, 3, c_shift=3, out_shift=9) for a, b in shapes]
    layers.append(LayerSpec("linear", 5184, 10, c_shift=3, out_shift=6, relu=False))
    return layers


def random_tensors(p, layers, seed: int = 0) -> list[dict]:
    """Seeded random integer tensors inside the contract's ranges; a signed head (``lns``,
    ``bm2``) also gets a random sign per weight (drawn after the other layers' tensors, so a
    network's ``bm15`` tensors do not depend on its head)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in layers:
        if isinstance(p, BMParams):
            w = rng.integers(max(p.w_log_min, 60), min(p.w_log_max, 260) + 1, s.weight_shape)
            b = rng.integers(-4000, 4000, s.out_ch)
        else:
            w = rng.integers(p.w_min, p.w_max + 1, s.weight_shape)
            b = rng.integers(-3000, 3000, s.out_ch)
        out.append({"w": w, "bias": b})
    for s, t in zip(layers, out, strict=True):
        if s.signed_weights:
            t["sign"] = rng.integers(0, 2, s.weight_shape)
    return out
