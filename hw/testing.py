"""Amaranth-simulator driver for the stream blocks of ``hw/`` (used by ``tests/test_hw_*.py``).

One testbench drives ``dut.i`` with a list of payloads and collects ``dut.o``, with optional
random gaps on the input (``p_valid``) and random back-pressure on the output (``p_ready``),
both from a seeded generator, and counts cycles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["StreamRun", "fc_buffer_words", "run_stream"]


@dataclass
class StreamRun:
    outputs: list = field(default_factory=list)
    first_in: int | None = None  # cycle the first input beat was taken
    last_out: int | None = None  # cycle the last output beat was taken
    in_cycles: list = field(default_factory=list)  # cycle each input beat was taken
    out_cycles: list = field(default_factory=list)  # cycle each output beat was taken

    @property
    def cycles(self) -> int:
        """First beat in to last beat out, both inclusive."""
        return self.last_out - self.first_in + 1


def run_stream(
    dut,
    beats,
    n_out: int,
    *,
    seed: int = 0,
    p_valid: float = 1.0,
    p_ready: float = 1.0,
    setup=(),
    max_cycles: int = 1_000_000,
    decode=None,
) -> StreamRun:
    """Feed ``beats`` (payload values for ``dut.i``) and take ``n_out`` beats from ``dut.o``.

    ``setup`` is a sequence of ``(port, value)`` pairs: other inputs held constant. ``decode``
    turns each output payload (as the simulator returns it) into a plain value.
    """
    from amaranth.sim import Simulator

    rng = np.random.default_rng(seed)
    res = StreamRun()

    async def testbench(ctx):
        for port, value in setup:
            ctx.set(port, value)
        n = 0
        cycle = 0
        while len(res.outputs) < n_out:
            if cycle > max_cycles:
                raise TimeoutError(f"{len(res.outputs)}/{n_out} outputs after {cycle} cycles")
            valid = n < len(beats) and (p_valid >= 1.0 or rng.random() < p_valid)
            ctx.set(dut.i.valid, valid)
            if valid:
                ctx.set(dut.i.payload, beats[n])
            ready = p_ready >= 1.0 or rng.random() < p_ready
            ctx.set(dut.o.ready, ready)
            took = valid and ctx.get(dut.i.ready)
            if ready and ctx.get(dut.o.valid):
                out = ctx.get(dut.o.payload)
                res.outputs.append(decode(out) if decode else out)
                res.out_cycles.append(cycle)
                res.last_out = cycle
            if took:
                res.in_cycles.append(cycle)
                if res.first_in is None:
                    res.first_in = cycle
                n += 1
            await ctx.tick()
            cycle += 1
        ctx.set(dut.i.valid, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return res


def fc_buffer_words(params, x, cols: int) -> list[int]:
    """The FC engine's buffer (:class:`hw.blocks.fc.FCEngine`) for a ``(n_ch, n_pix)`` code map, as
    the feeder writes it: word ``g * n_pix + q`` holds channels ``g * cols ..`` of pixel ``q``,
    lane ``c`` in bits ``c * w ..`` of the word (``w`` the stored activation's width: the code,
    then for BM its log code from :func:`model.reference.ref_log`); missing channels are 0."""
    from model.params import BMParams
    from model.reference import ref_log

    x = np.asarray(x, dtype=np.int64)
    n_ch, n_pix = x.shape
    bm = isinstance(params, BMParams)
    lx = ref_log(params, x)[0] if bm else np.zeros_like(x)
    width = params.a_bits + (params.lx_bits if bm else 0)
    words = []
    for g in range(-(-n_ch // cols)):
        for q in range(n_pix):
            word = 0
            for c in range(min(cols, n_ch - g * cols)):
                ch = g * cols + c
                lane = int(x[ch, q]) | (int(lx[ch, q]) << params.a_bits if bm else 0)
                word |= lane << (c * width)
            words.append(word)
    return words
