"""The network each board builds by default: it plans on the board's array and its memories fit
the chip (the sizes quoted in hw/boards/platforms.py); the iCE40 UltraPlus puts the banks in
SPRAM."""

import math

import pytest

from hw.accel.accelerator import use_spram
from hw.accel.plan import plan_network, predict_image_cycles
from hw.boards.platforms import BOARDS
from model.params import PRESETS
from sim.random_export import VARIANTS, random_export, variant_layers

# block RAM per board default variant: (blocks, bits per block)
BRAM = {"ulx3s": (208, 18 * 1024), "icebreaker": (30, 4 * 1024),
        "tang_nano_9k": (26, 18 * 1024), "tang_primer_20k": (46, 18 * 1024),
        "arty_a7": (100, 18 * 1024)}


def plan_for(board):
    b = BOARDS[board]
    p = PRESETS["bm8"]
    return plan_network(p, variant_layers(b.network), (1, 28, 28), rows=b.array[0],
                        cols=b.array[1])


def memory_bits(plan, word_bits=16, w_bits=10):
    maps = sum(plan.rows * d * word_bits for d in plan.buf_depth)
    weights = plan.cols * plan.w_depth * w_bits
    return maps, weights


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_board_network_plans(board):
    plan = plan_for(board)
    assert predict_image_cycles(plan) > plan.ideal_cycles


def test_paper_lenet_does_not_fit_the_small_boards():
    paper = plan_network(PRESETS["bm8"], variant_layers("lenet"), (1, 28, 28), rows=2, cols=2)
    weight_bits = 63_648 * 10
    assert sum(lp.fan_in * lp.cout for lp in paper.layers) == 63_648
    for board in ("icebreaker", "tang_nano_9k", "tang_primer_20k"):
        n, bits = BRAM[board]
        maps_min = (21_632 + 9_216) * 16
        assert weight_bits + maps_min > n * bits or weight_bits > n * bits, board


def test_icebreaker_variant_fits():
    plan = plan_for("icebreaker")
    assert 2 * plan.rows <= 4 and max(plan.buf_depth) <= 16384  # one SPRAM per bank
    # weights: 10-bit codes in 256 x 16 block RAMs, leaving room for the FIFOs
    assert plan.cols * math.ceil(plan.w_depth / 256) <= 16


def test_tang_nano_9k_variant_fits():
    plan = plan_for("tang_nano_9k")
    maps, weights = memory_bits(plan, word_bits=18)  # 1024 x 18 blocks
    assert maps + weights <= 26 * 18 * 1024


def test_spram_only_on_ultraplus():
    class Plat:
        device = "iCE40UP5K"

    assert use_spram(Plat(), 16, (2048, 2048), 2)
    assert not use_spram(Plat(), 17, (2048, 2048), 2)  # wider than an SPRAM word
    assert not use_spram(Plat(), 16, (2048, 2048), 4)  # eight banks, four SPRAMs
    assert not use_spram(Plat(), 16, (32768, 2048), 2)
    assert not use_spram(None, 16, (2048, 2048), 2)

    class Ecp5:
        device = "LFE5U-85F"

    assert not use_spram(Ecp5(), 16, (2048, 2048), 2)


@pytest.mark.parametrize("net", sorted(VARIANTS))
@pytest.mark.parametrize("arith", ["bm", "mac"])
def test_random_export_is_valid(net, arith, tmp_path):
    from model.export import load_export, save_export

    exp = random_export(arith, seed=1, net=net)
    got = load_export(save_export(tmp_path / "x.npz", exp) and tmp_path / "x.npz")
    assert got.arith == arith and [s.to_dict() for s in got.layers] == [
        s.to_dict() for s in exp.layers]


def test_accel_with_spram_banks_equals_reference(monkeypatch):
    """The iCE40 UltraPlus form: every feature-map bank a single-port SPRAM (its simulation
    model), shared between reads and writes; logits and cycles as with block RAM."""
    import numpy as np
    from test_hw_accel import random_net, rtl_accel

    import hw.accel.accelerator
    from hw.accel.accelerator import Accelerator
    from model.reference import ref_network

    monkeypatch.setattr(hw.accel.accelerator, "use_spram", lambda *a: True)
    p = PRESETS["bm8"]
    rng = np.random.default_rng(5)
    layers, tensors = random_net(p, rng)
    plan = plan_network(p, layers, (1, 8, 8), rows=2, cols=2)
    images = [rng.integers(0, 256, size=(1, 8, 8)) for _ in range(2)]
    got, cycles = rtl_accel(Accelerator(plan, tensors), images)
    assert got == [ref_network(p, layers, tensors, im).tolist() for im in images]
    assert cycles == [predict_image_cycles(plan)] * 2


@pytest.mark.parametrize("head", ["lns", "bm2"])
def test_random_export_with_a_signed_head(head, tmp_path):
    """``--head``: the classifier's neuron and a seeded sign per weight; the convolutions'
    tensors are those of the bm15 export with the same seed."""
    import numpy as np

    from model.export import load_export
    from sim.random_export import main

    out = tmp_path / "x.npz"
    assert main(["--net", "lenet-w4", "--head", head, "--seed", "3", "--out", str(out)]) == 0
    got = load_export(out)
    assert got.head == head and got.layers[-1].c_shift == 0
    sign = got.tensors[-1]["sign"]
    assert sign.shape == got.layers[-1].weight_shape and set(np.unique(sign)) == {0, 1}
    plain = random_export("bm", seed=3, net="lenet-w4")
    for a, b in zip(plain.tensors, got.tensors, strict=True):
        assert (a["w"] == b["w"]).all() and (a["bias"] == b["bias"]).all()
    with pytest.raises(ValueError, match="BM classifier"):
        random_export("mac", net="lenet-w4", head=head)
