"""Quantization from float nets to the integer exports (small nets; a few seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.export import load_export, save_export
from model.maxops import MaxOp
from model.params import PRESETS
from model.quantize import (
    QuantizeError,
    check_stages,
    float_logits,
    fq_forward,
    int_logits,
    quantize,
    stages_of,
    to_float_input,
)
from model.registry import create_net


def images(n=64, hw=12, seed=0):
    """Blobby synthetic uint8 images: mostly zero, like MNIST."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, hw, hw)) * (rng.random((n, hw, hw)) < 0.3)
    return x.astype(np.uint8)


def small_net(form: str, seed: int = 0, head: str = "bm15"):
    """A tiny LeNet; ``form`` "bm15" converts the convolutions, and the classifier too unless
    ``head`` is "lns" (kept classical) or "bm2" (a 4-branch hard-max layer)."""
    torch.manual_seed(seed)
    net = create_net("lenet", in_hw=12, widths=(4, 4), forms=("classical",) * 3)
    if form == "bm15":
        for i in range(2):
            net.convert_layer(i, "bm15", learn_corr=True)
        if head == "bm15":
            net.convert_layer(2, "bm15", learn_corr=True)
        elif head == "bm2":
            net.convert_layer(2, "bm4", op=MaxOp("max"))
    return net.eval()


def dequant_last(exp):
    s = exp.metadata["layer_scales"][-1]
    return 2.0 ** exp.layers[-1].out_shift / s["acc_scale"]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.mark.parametrize("form", ["classical", "bm15"])
def test_stages_reproduce_net(form):
    net = small_net(form)
    check_stages(net, stages_of(net), to_float_input(images(16)))


def test_mac_ptq_tracks_float(tmp_path):
    net = small_net("classical")
    st = stages_of(net)
    x = images(128)
    exp = quantize(st, x[:64], PRESETS["mac8"], preset="mac8")
    fl = float_logits(st, x[64:])
    il = int_logits(exp, x[64:]) * dequant_last(exp)
    err = np.abs(il - fl).max() / np.abs(fl).max()
    assert err < 0.05, err
    got = load_export(save_export(tmp_path / "m.npz", exp) and tmp_path / "m.npz")
    np.testing.assert_array_equal(int_logits(got, x[64:]), int_logits(exp, x[64:]))
    assert all(s.c_shift == 0 for s in exp.layers)


@pytest.mark.parametrize("head", ["bm15", "lns", "bm2"])
@pytest.mark.parametrize("log_offset", [False, True])
def test_bm_ptq_tracks_float(tmp_path, log_offset, head):
    net = small_net("bm15", head=head)
    st = stages_of(net)
    x = images(128)
    exp = quantize(st, x[:64], PRESETS["bm8"], preset="bm8", log_offset=log_offset)
    assert exp.head == head
    if head != "bm15":
        assert exp.layers[-1].c_shift == 0
    fl = float_logits(st, x[64:])
    il = int_logits(exp, x[64:]) * dequant_last(exp)
    corr = np.corrcoef(il.ravel(), fl.ravel())[0, 1]
    assert corr > 0.99, corr
    save_export(tmp_path / "b.npz", exp)
    got = load_export(tmp_path / "b.npz")
    assert got.checksum and got.head == head


@pytest.mark.parametrize("head", ["bm15", "lns", "bm2"])
def test_fake_quant_forward_matches_reference(head):
    """The QAT forward is the integer network up to the exp table's rounding."""
    net = small_net("bm15", head=head)
    st = stages_of(net)
    x = images(96)
    p = PRESETS["bm8"]
    exp = quantize(st, x[:64], p, preset="bm8", log_offset=False)
    with torch.no_grad():
        fq = fq_forward(st, exp.layers, exp.metadata["layer_scales"], p, to_float_input(x[64:]))
    il = int_logits(exp, x[64:]) * dequant_last(exp)
    rel = np.abs(fq.numpy() - il).max() / np.abs(il).max()
    assert rel < 0.02, rel


def test_bm_needs_hard_max_bm_layers():
    x = images(32)
    with pytest.raises(QuantizeError, match="not a 1.5-BM layer"):
        quantize(stages_of(small_net("classical")), x, PRESETS["bm8"], preset="bm8")
    net = small_net("bm15")
    net.layers[0].set_op(MaxOp("lse", alpha=4.0))
    with pytest.raises(QuantizeError, match="hard max"):
        quantize(stages_of(net), x, PRESETS["bm8"], preset="bm8")
    net = small_net("bm15")
    with torch.no_grad():
        net.layers[1].corr_x.fill_(-1.0)
    with pytest.raises(QuantizeError, match="corr_x must be > 0"):
        quantize(stages_of(net), x, PRESETS["bm8"], preset="bm8")


def test_mac_needs_classical():
    with pytest.raises(QuantizeError, match="BM layer"):
        quantize(stages_of(small_net("bm15")), images(32), PRESETS["mac8"], preset="mac8")


def test_cli_round_trip(tmp_path, mnist_dir):
    """``python -m model.quantize`` then ``python -m model.evaluate`` on a tiny MNIST net."""
    from model import evaluate
    from model import quantize as q
    from model.train import net_to_dict

    torch.manual_seed(0)
    net = create_net("lenet", widths=(2,), forms=("classical",) * 2)
    ck = tmp_path / "model.pt"
    torch.save(net_to_dict(net), ck)
    out = tmp_path / "mac.npz"
    assert (
        q.main(
            [
                "--checkpoint",
                str(ck),
                "--out",
                str(out),
                "--arith",
                "mac",
                "--data-dir",
                str(mnist_dir),
                "--calib-images",
                "200",
                "--val-images",
                "200",
                "--percentiles",
                "100",
            ]
        )
        == 0
    )
    exp = load_export(out)
    assert exp.preset == "mac8" and exp.metadata["checkpoint"].endswith("model.pt")
    assert (
        evaluate.main(
            ["--weights", str(out), "--data-dir", str(mnist_dir), "--limit", "300", "--quiet"]
        )
        == 0
    )


def test_qat_steps_run_and_move_weights():
    from model.quantize import qat_finetune

    net = small_net("bm15")
    st = stages_of(net)
    x = images(128)
    y = np.random.default_rng(0).integers(0, 10, 128)
    p = PRESETS["bm8"]
    exp = quantize(st, x[:64], p, preset="bm8", log_offset=False)
    before = net.layers[0].weight.detach().clone()
    net.train()
    qat_finetune(
        st,
        exp.layers,
        exp.metadata["layer_scales"],
        p,
        x,
        y,
        epochs=0.5,
        batch=16,
        lr=1e-3,
        log=lambda msg: None,
    )
    assert not torch.equal(before, net.layers[0].weight.detach())
    assert all(torch.isfinite(q).all() for q in net.parameters())
