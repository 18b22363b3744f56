"""RTL: the shifted log/exp lookup units, exhaustive, in Icarus or Verilator (``SIM``)."""

import pytest

from model.params import PRESETS
from sim.runner import run_cocotb

pytestmark = pytest.mark.rtl

PRESET_IDS = ["bm8", "bm8f6", "bm4"]
TRAFFIC = {"smooth": (0.0, 0.0), "stalls": (0.3, 0.4)}


@pytest.mark.parametrize("traffic", list(TRAFFIC))
@pytest.mark.parametrize("preset", PRESET_IDS)
def test_log_unit(preset, traffic):
    from hw.blocks.logexp import LogUnit

    p = PRESETS[preset]
    stall, bp = TRAFFIC[traffic]
    run_cocotb(LogUnit(p), toplevel="log_unit", module="tb_logexp", testcase="log_unit_exhaustive",
               params={"params": p.to_dict(), "stall": stall, "backpressure": bp},
               tag=f"{p.slug}-{traffic}")


@pytest.mark.parametrize("preset", PRESET_IDS)
def test_exp_unit(preset):
    from hw.blocks.logexp import ExpUnit

    p = PRESETS[preset]
    run_cocotb(ExpUnit(p), toplevel="exp_unit", module="tb_logexp", testcase="exp_unit_exhaustive",
               params={"params": p.to_dict(), "stall": 0.2, "backpressure": 0.3}, tag=p.slug)
