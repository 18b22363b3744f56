"""cocotb: the whole-network accelerator on real images; class and every logit against the
reference. Also used by ``python -m sim.fullset``.

Params (JSON): ``images`` (lists of pixels), ``expected`` (lists of logits), ``cycles`` (the
cycle model's prediction), ``backpressure``, ``report`` (optional path of a JSON summary).
"""

import json
import time

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from sim.tb import TB, StreamDriver, params, seed


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
    clock = {"n": 0}

    async def count():
        while True:
            await RisingEdge(tb.clk)
            clock["n"] += 1

    cocotb.start_soon(count())
    for idx, (image, want) in enumerate(zip(cfg["images"], cfg["expected"], strict=True)):
        start = clock["n"]
        await drv.send(image)
        got = []
        while len(got) < n_log:
            if bp:
                dut.o__ready.value = int(tb.rng.random() >= bp)
                await RisingEdge(tb.clk)
                if dut.o__valid.value == 1 and dut.o__ready.value == 1:
                    got.append(dut.o__payload.value.to_signed())
            else:
                if dut.o__valid.value != 1:
                    await RisingEdge(dut.o__valid)
                await ReadOnly()
                got.append(dut.o__payload.value.to_signed())
                await RisingEdge(tb.clk)
        # the first pixel is taken one edge after send() starts driving it
        cycles.append(clock["n"] - start)
        if got != want:
            first = next(i for i, (a, b) in enumerate(zip(want, got, strict=True)) if a != b)
            mismatches.append((idx, first, want[first], got[first]))
            dut._log.error(f"image {idx}: first mismatching logit {first}: expected "
                           f"{want[first]}, got {got[first]} (seed {seed()})")
    wall = time.time() - t0
    if cfg.get("report"):
        with open(cfg["report"], "w") as f:
            json.dump({"images": len(cfg["images"]), "mismatches": mismatches,
                       "cycles": cycles, "wall_s": wall}, f)
    assert not mismatches, f"{len(mismatches)} images differ; first: {mismatches[0]}"
    if not bp:
        assert all(c == cfg["cycles"] for c in cycles), \
            f"cycles per image {sorted(set(cycles))} != model {cfg['cycles']}"
