"""cocotb: the FC engine (the classifier on its own engine) alone, every logit against the
reference and the cycles from ``start`` to the last logit against the cycle model.

Params (JSON): ``maps`` (per input map, the engine's buffer words as integers, see
:func:`hw.testing.fc_buffer_words`), ``expected`` (per map, the reference logits), ``cycles``
(:func:`hw.blocks.fc.fc_cycles`), ``backpressure`` (probability of ``o__ready`` low in a cycle).
"""

import cocotb
from cocotb.triggers import RisingEdge
from cocotb.utils import get_sim_time

from sim.tb import TB, Scoreboard, params, seed

PERIOD = 10  # ns, the TB clock


def _now():
    return round(get_sim_time("ns")) // PERIOD


@cocotb.test()
async def fc_engine_maps(dut):
    cfg = params()
    tb = TB(dut, period_ns=PERIOD)
    dut.wr_en.value = 0
    dut.start.value = 0
    dut.o__ready.value = 0
    await tb.reset()
    bp = cfg["backpressure"]
    for idx, (words, want) in enumerate(zip(cfg["maps"], cfg["expected"], strict=True)):
        for addr, word in enumerate(words):  # the feeder's rows
            dut.wr_en.value = 1
            dut.wr_addr.value = addr
            dut.wr_data.value = word
            await RisingEdge(tb.clk)
        dut.wr_en.value = 0
        dut.start.value = 1
        await RisingEdge(tb.clk)
        t_start = _now()  # the edge that took ``start``
        dut.start.value = 0
        got, t_last = [], None
        while len(got) < len(want):
            dut.o__ready.value = int(not (bp and tb.rng.random() < bp))
            await RisingEdge(tb.clk)
            if dut.o__valid.value == 1 and dut.o__ready.value == 1:
                got.append(dut.o__payload.value.to_signed())
                t_last = _now()
            if _now() - t_start > 20 * cfg["cycles"] + 1000:
                raise TimeoutError(f"map {idx}: {len(got)} of {len(want)} logits (seed {seed()})")
        dut.o__ready.value = 0
        Scoreboard(f"FC engine, map {idx}").compare(want, got)
        await RisingEdge(tb.clk)
        assert dut.busy.value == 0, f"map {idx}: busy after the last logit"
        if not bp:
            cycles = t_last - t_start + 1
            assert cycles == cfg["cycles"], f"map {idx}: {cycles} cycles != model {cfg['cycles']}"
