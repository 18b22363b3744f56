"""The classifier heads of the integer reference (``lns``, ``bm2``): each against a direct float
evaluation within a stated bound, the batched path against the per-image definition, the edge
cases (zero inputs, an empty branch, the widest accumulator), and the export's head records."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from model.export import ExportError, NetworkExport, compute_checksum, load_export, save_export
from model.params import BMParams, LayerSpec
from model.reference import (
    batch_bm_layer,
    bm2_acc_bits,
    lns_acc_bits,
    ref_bm_layer,
    ref_exp,
    ref_log,
    ref_network,
    ref_network_batch,
)

P = BMParams()


def term_rel_bound(p: BMParams) -> float:
    """Relative error of one term ``EXP(Lx + Lw)`` against ``x * |w| * k`` (before the floor).

    ``Lx`` is low by at most ``log2(1 + 2**-mant_bits)`` plus half a table LSB and high by half
    an LSB; ``Lw`` is rounded (half an LSB); the exp table rounds to ``2**-(t+1)`` of its
    entry. In all, the log2 error is below ``log2(1 + 2**-mant_bits) + 2**-f`` plus the exp
    table's share."""
    lg = math.log2(1 + 2.0**-p.mant_bits) + 2.0**-p.log_frac
    return 2.0**lg * (1 + 2.0 ** -(p.exp_table_bits + 1)) - 1


def random_head(rng, neuron: str, n: int = 300, c: int = 10, zeros: float = 0.4):
    x = rng.integers(0, P.a_max + 1, size=(16, n))
    x[rng.random(x.shape) < zeros] = 0
    w = rng.normal(size=(c, n))
    k = 2.0**14 / (P.a_max * np.abs(w).max())
    lw = np.floor((1 << P.log_frac) * np.log2(np.abs(w) * k) + 0.5)
    lw = np.clip(lw, P.w_log_min, P.w_log_max).astype(np.int64)
    sign = (w < 0).astype(np.int64)
    bias = rng.integers(-5000, 5000, size=c)
    spec = LayerSpec("linear", n, c, relu=False, neuron=neuron)
    return spec, x, w * k, lw, sign, bias


def per_image_acc(spec, x, lw, sign, bias):
    return np.stack(
        [ref_bm_layer(P, spec, xi, lw, bias, sign=sign, return_acc=True)[1][0] for xi in x]
    )


@pytest.mark.parametrize("seed", range(4))
def test_lns_against_float(seed):
    rng = np.random.default_rng(seed)
    spec, x, wk, lw, sign, bias = random_head(rng, "lns")
    acc = per_image_acc(spec, x, lw, sign, bias)
    want = x @ wk.T + bias
    # each term within term_rel_bound of |x w k|, and the floor loses less than 1 per term
    bound = term_rel_bound(P) * (x[:, None, :] * np.abs(wk)).sum(-1) + spec.fan_in
    assert (np.abs(acc - want) <= bound).all()
    assert np.abs(acc).max() < 1 << (lns_acc_bits(P, spec) - 1)


@pytest.mark.parametrize("seed", range(4))
def test_bm2_against_float(seed):
    rng = np.random.default_rng(seed)
    spec, x, wk, lw, sign, bias = random_head(rng, "bm2")
    acc = per_image_acc(spec, x, lw, sign, bias)
    x3 = x[:, None, :].astype(np.float64)
    ep = (x3 * np.where(wk > 0, wk, 0)).max(-1)
    en = (x3 * np.where(wk < 0, -wk, 0)).max(-1)
    want = ep - en + bias
    bound = term_rel_bound(P) * (ep + en) + 2
    assert (np.abs(acc - want) <= bound).all()


@pytest.mark.parametrize("neuron", ["lns", "bm2"])
@pytest.mark.parametrize("seed", range(3))
def test_head_batch_equals_per_image(neuron, seed):
    rng = np.random.default_rng(10 + seed)
    spec, x, _, lw, sign, bias = random_head(rng, neuron, zeros=0.2 + 0.3 * seed)
    x[0] = 0  # every input flagged
    assert (
        batch_bm_layer(P, spec, x, lw, bias, sign) == per_image_acc(spec, x, lw, sign, bias)
    ).all()


def test_bm2_empty_branch_and_zero_inputs():
    spec = LayerSpec("linear", 4, 2, relu=False, neuron="bm2")
    lw = np.array([[0, 32, 64, 96], [0, 0, 0, 0]])
    sign = np.array([[0, 0, 0, 0], [1, 0, 1, 0]])  # class 0 has no negative weight
    bias = np.array([0, 0])
    x = np.array([4, 0, 2, 0])
    acc = ref_bm_layer(P, spec, x, lw, bias, sign=sign, return_acc=True)[1][0]
    # class 0: max(4*1, 2*4) = 8 and an empty negative branch; class 1: max(0, 0) - max(4, 2)
    assert acc.tolist() == [8 << P.exp_table_bits >> P.exp_table_bits, 0 - 4]
    assert ref_bm_layer(P, spec, np.zeros(4, int), lw, bias, sign=sign, return_acc=True)[1][
        0
    ].tolist() == [0, 0]


def test_lns_widest_accumulator():
    """The largest term (largest code, largest weight code), all one sign, over the whole
    fan-in and with the extreme biases: exact, no wrap, and the logit saturates both ways."""
    n = 5184
    spec = LayerSpec("linear", n, 2, relu=False, neuron="lns")
    lw = np.full((2, n), P.w_log_max)
    sign = np.stack([np.zeros(n, int), np.ones(n, int)])
    bias = np.array([(1 << (P.bias_bits - 1)) - 1, -(1 << (P.bias_bits - 1))])
    x = np.full(n, P.a_max)
    y, acc = ref_bm_layer(P, spec, x, lw, bias, sign=sign, return_acc=True)
    lx, _ = ref_log(P, P.a_max)
    t = int(ref_exp(P, int(lx) + P.w_log_max))
    assert acc[0].tolist() == [n * t + bias[0], -n * t + bias[1]]
    assert max(abs(int(a)) for a in acc[0]).bit_length() < lns_acc_bits(P, spec)
    lim = 1 << (P.acc_bits - 1)
    assert y.tolist() == [lim - 1, -lim]  # the logit saturates both ways
    assert bm2_acc_bits(P, spec) < lns_acc_bits(P, spec)


def head_export(neuron: str) -> NetworkExport:
    rng = np.random.default_rng(3)
    layers = (
        LayerSpec("conv", 1, 4, 3, c_shift=2, out_shift=6),
        LayerSpec("linear", 4 * 6 * 6, 10, relu=False, out_shift=4, neuron=neuron),
    )
    tensors = [
        {"w": rng.integers(-200, 100, (4, 1, 3, 3)), "bias": rng.integers(-500, 500, 4)},
        {
            "w": rng.integers(-300, 200, (10, 144)),
            "bias": rng.integers(-500, 500, 10),
            **({"sign": rng.integers(0, 2, (10, 144))} if neuron != "bm15" else {}),
        },
    ]
    return NetworkExport("bm8", P, layers, tuple(tensors), input_shape=(1, 8, 8))


@pytest.mark.parametrize("neuron", ["bm15", "lns", "bm2"])
def test_export_records_head(neuron, tmp_path):
    exp = head_export(neuron)
    save_export(tmp_path / "e.npz", exp)
    got = load_export(tmp_path / "e.npz")
    assert got.head == neuron
    img = np.random.default_rng(0).integers(0, 256, (3, 1, 8, 8))
    batch = ref_network_batch(got.params, got.layers, got.tensors, img)
    for i in range(3):
        assert (ref_network(got.params, got.layers, got.tensors, img[i]) == batch[i]).all()


def test_export_unknown_head_rejected(tmp_path):
    path = tmp_path / "e.npz"
    save_export(path, head_export("lns"))
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["meta"].tobytes())
    meta["layers"][-1]["neuron"] = "bm9"
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    rest = {k: v for k, v in arrays.items() if k not in ("meta", "checksum")}
    arrays["checksum"] = np.frombuffer(compute_checksum(meta, rest).encode(), dtype=np.uint8)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    with pytest.raises(ExportError, match="unknown neuron 'bm9'"):
        load_export(path)


def test_export_head_errors(tmp_path):
    exp = head_export("lns")
    no_sign = {k: v for k, v in exp.tensors[1].items() if k != "sign"}
    with pytest.raises(ExportError, match="needs a sign"):
        save_export(
            tmp_path / "a.npz",
            NetworkExport("bm8", P, exp.layers, (exp.tensors[0], no_sign), input_shape=(1, 8, 8)),
        )
    bad = dict(exp.tensors[1], sign=np.full((10, 144), 2))
    with pytest.raises(ExportError, match="0 or 1"):
        save_export(
            tmp_path / "b.npz",
            NetworkExport("bm8", P, exp.layers, (exp.tensors[0], bad), input_shape=(1, 8, 8)),
        )
    with pytest.raises(ValueError, match="linear layer"):
        LayerSpec("conv", 1, 4, 3, neuron="lns")
    assert not (tmp_path / "a.npz").exists() and not (tmp_path / "b.npz").exists()
