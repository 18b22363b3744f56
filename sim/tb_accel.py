"""cocotb: the whole-network accelerator on real images; class and every logit against the
reference. Also used by ``python -m sim.fullset``.

Params (JSON): ``images`` (lists of pixels), ``expected`` (lists of logits), ``cycles`` (the
cycle model's latency of one image), ``backpressure``, ``report`` (optional path of a JSON
summary), ``interval`` (optional: the model's steady-state cycles per image; the images are
then also streamed back to back and the intervals between their last logits checked).
"""

import json
import time

import cocotb
from cocotb.triggers import RisingEdge, Timer, with_timeout
from cocotb.utils import get_sim_time

from sim.tb import TB, StreamDriver, params, seed

PERIOD = 10  # ns, the TB clock


def _now():
    return round(get_sim_time("ns")) // PERIOD


async def _collect(dut, tb, n_log, bp, timeout_cycles):
    """The next ``n_log`` logits and the cycle of the edge that took the last one."""
    got, last_edge = [], None
    while len(got) < n_log:
        if bp:
            dut.o__ready.value = int(tb.rng.random() >= bp)
        elif dut.o__valid.value != 1:
            # no Python per cycle while the network computes
            await with_timeout(RisingEdge(dut.o__valid), timeout_cycles * PERIOD, "ns")
            await Timer(1, "ns")
        await RisingEdge(tb.clk)
        if dut.o__valid.value == 1 and dut.o__ready.value == 1:
            got.append(dut.o__payload.value.to_signed())
            last_edge = _now()
    return got, last_edge


def _first_mismatch(dut, idx, want, got, mismatches):
    if got != want:
        first = next(i for i, (a, b) in enumerate(zip(want, got, strict=True)) if a != b)
        mismatches.append((idx, first, want[first], got[first]))
        dut._log.error(f"image {idx}: first mismatching logit {first}: expected "
                       f"{want[first]}, got {got[first]} (seed {seed()})")


@cocotb.test()
async def accel_images(dut):
    cfg = params()
    tb = TB(dut)
    drv = StreamDriver(dut, tb.clk, "i", rng=tb.rng)
    dut.o__ready.value = 1
    await tb.reset()
    n_log = len(cfg["expected"][0]) if cfg["expected"] else 10
    bp = cfg.get("backpressure", 0.0)
    mismatches, cycles = [], []
    t0 = time.time()
    for idx, (image, want) in enumerate(zip(cfg["images"], cfg["expected"], strict=True)):
        await drv.send(image)
        start = round(drv.first_taken_ns) // PERIOD
        got, last_edge = await _collect(dut, tb, n_log, bp, 4 * cfg["cycles"])
        cycles.append(last_edge - start + 1)  # both edges included
        _first_mismatch(dut, idx, want, got, mismatches)
    intervals = []
    if cfg.get("interval"):
        # the same images back to back: the source never waits for an answer
        async def feed_all():
            for image in cfg["images"]:
                await drv.send(image)

        cocotb.start_soon(feed_all())
        ends = []
        for idx, want in enumerate(cfg["expected"]):
            got, last_edge = await _collect(dut, tb, n_log, bp, 4 * cfg["cycles"])
            ends.append(last_edge)
            _first_mismatch(dut, idx, want, got, mismatches)
        intervals = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    wall = time.time() - t0
    if cfg.get("report"):
        with open(cfg["report"], "w") as f:
            json.dump({"images": len(cfg["images"]), "mismatches": mismatches,
                       "cycles": cycles, "intervals": intervals, "wall_s": wall}, f)
    assert not mismatches, f"{len(mismatches)} images differ; first: {mismatches[0]}"
    if not bp:
        assert all(c == cfg["cycles"] for c in cycles), \
            f"cycles per image {sorted(set(cycles))} != model {cfg['cycles']}"
        assert all(c == cfg["interval"] for c in intervals), \
            f"intervals {sorted(set(intervals))} != model {cfg['interval']}"
