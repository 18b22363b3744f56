"""``python -m sim.fullset`` helpers that need no simulator: the weight mutation."""

from __future__ import annotations

import numpy as np
import pytest

from model.params import PRESETS
from sim.fullset import flip_weight
from sim.nets import lenet_layers, random_tensors


@pytest.mark.parametrize("preset", ["bm8", "mac8"])
def test_flip_weight_changes_exactly_one_bit(preset):
    p = PRESETS[preset]
    layers = lenet_layers()
    t = random_tensors(p, layers, seed=2)
    width = getattr(p, "w_log_bits", None) or p.w_bits
    for bit in (0, width - 1):
        f = flip_weight(t, f"2,17,{bit}", p)
        diff = [np.argwhere(a["w"] != b["w"]) for a, b in zip(t, f, strict=True)]
        assert [len(d) for d in diff] == [0, 0, 1, 0, 0, 0]
        old, new = int(t[2]["w"].reshape(-1)[17]), int(f[2]["w"].reshape(-1)[17])
        assert (old ^ new) & ((1 << width) - 1) == 1 << bit
        lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
        assert lo <= new <= hi
        assert f[2]["w"].shape == t[2]["w"].shape
    assert np.array_equal(t[2]["w"], random_tensors(p, layers, seed=2)[2]["w"])  # a copy
    with pytest.raises(ValueError):
        flip_weight(t, f"0,0,{width}", p)
