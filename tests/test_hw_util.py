# amaranth: UnusedElaboratable=no
"""The register slice of :mod:`hw.blocks.util`: order, throughput, and no handshake path through
it."""

from __future__ import annotations

import pytest
from amaranth.hdl import unsigned
from amaranth.sim import Simulator

from hw.blocks.util import RegisterSlice
from hw.testing import run_stream


@pytest.mark.parametrize("seed,p_valid,p_ready", [(0, 1.0, 1.0), (1, 0.5, 0.5), (2, 0.9, 0.3),
                                                  (3, 0.3, 0.9)])
def test_register_slice_keeps_every_beat_in_order(seed, p_valid, p_ready):
    beats = list(range(1, 200))
    run = run_stream(RegisterSlice(unsigned(8)), beats, len(beats), seed=seed, p_valid=p_valid,
                     p_ready=p_ready)
    assert run.outputs == beats
    # one cycle of latency for the first beat when the sink is always ready
    if p_ready >= 1.0:
        assert run.out_cycles[0] == run.in_cycles[0] + 1


def test_register_slice_full_throughput():
    beats = list(range(100))
    run = run_stream(RegisterSlice(unsigned(8)), beats, len(beats))
    assert run.cycles == len(beats) + 1  # a beat every cycle, plus the one register


def test_register_slice_ready_and_valid_do_not_see_the_other_side():
    """``i.ready`` does not change with ``o.ready``, nor ``o.valid`` with ``i.valid``, within a
    cycle: both come from registers."""
    dut = RegisterSlice(unsigned(8))
    seen = []

    async def testbench(ctx):
        for cycle in range(40):
            # a fixed pattern that fills, stalls and drains the slice
            ctx.set(dut.i.valid, cycle % 3 != 2)
            ctx.set(dut.i.payload, cycle)
            ready = []
            valid = []
            for o_ready in (0, 1):
                ctx.set(dut.o.ready, o_ready)
                ready.append(ctx.get(dut.i.ready))
            for i_valid in (0, 1):
                ctx.set(dut.i.valid, i_valid)
                valid.append(ctx.get(dut.o.valid))
            seen.append((ready[0] == ready[1], valid[0] == valid[1]))
            ctx.set(dut.i.valid, cycle % 3 != 2)
            ctx.set(dut.o.ready, cycle % 5 < 2)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    assert all(r and v for r, v in seen)
