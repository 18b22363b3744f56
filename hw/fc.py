"""The network's linear classifier on its own small engine, beside the main array.

On the 16 x 16 array a linear layer is one pixel: one array row of sixteen does useful work, so
the paper LeNet's ``Linear(5184, 10)`` takes 5,184 cycles of a 31,000-cycle image while using a
sixteenth of the array. :class:`FCEngine` takes it off the array: a ``1 x n_out`` array of the
same processing elements (:class:`hw.array.SystolicArray`), its own exp unit and
requantization, and its own copy of its input map.

Dataflow
--------
* **Input buffer.** While the array runs the layer before the classifier (the *feeder*), the
  accelerator's write stage also writes each output row (one pixel, ``cols`` channels, codes
  and logs) into the engine's buffer, one word per row: group ``g`` of the feeder, pixel ``q``
  at address ``g * n_pix + q``. The feeder writes nowhere else.
* **Steps.** After ``start`` the engine reads one buffer word per ``ncol`` cycles and streams
  its channels, one per cycle, into its array; each column reads its own weight memory. The
  weights are stored in that step order (channel within pixel), which is a permutation of the
  layer's ``(channel, y, x)`` order: the max-plus maximum, the window sum and the
  multiply-accumulate sum do not depend on the order, so the result is the reference's, exactly.
* **After the array** the one row of ``n_out`` results goes through the exp unit (BM) and the
  requantization with the window sum ``S`` of the whole map; the logits leave on ``o`` one per
  cycle.

The accelerator starts the engine when the feeder's last row is written and goes on to the
next image; the engine runs beside that image's first layers. ``busy`` is high from ``start``
until the last logit is taken; the accelerator does not start the next feeder layer while it is
high, so the buffer is never overwritten while it is read.

Cycle model: see :func:`fc_cycles`.
"""

from __future__ import annotations

import math

import numpy as np
from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from model.params import BMParams

from .array import SystolicArray, array_latency
from .requant import Requant, window_sum_bits

__all__ = ["FCEngine", "fc_cycles", "fc_step_order"]

# cycles from ``start`` to the first beat into the engine's array: the start register, the
# counter stage and the memory read
FC_START = 2


def fc_step_order(n_ch: int, n_pix: int, cols: int) -> np.ndarray:
    """Indices into a ``(n_ch, n_pix)``-ordered fan-in, in the order the engine steps through
    them: buffer word ``g * n_pix + q`` holds channels ``g * cols ..`` of pixel ``q``, and its
    ``min(cols, n_ch - g * cols)`` channels are consecutive steps."""
    order = []
    for g in range(math.ceil(n_ch / cols)):
        chans = range(g * cols, min(n_ch, (g + 1) * cols))
        for q in range(n_pix):
            order.extend(ch * n_pix + q for ch in chans)
    return np.asarray(order, dtype=np.int64)


def fc_cycles(params, fan_in: int, n_out: int) -> int:
    """Cycles from ``start`` high to the last logit taken, with a sink that is always ready."""
    post = 2 + 3 if isinstance(params, BMParams) else 3  # exp unit, requantization
    return FC_START + fan_in + array_latency(1, n_out) + post + n_out


class FCEngine(wiring.Component):
    """A linear layer of ``n_out`` outputs over a ``n_ch x n_pix`` map, on a ``1 x n_out``
    array; see the module documentation.

    Parameters
    ----------
    params : BMParams or MACParams
    word : data.Layout
        One stored activation: ``{x, lx}`` (BM) or ``{x}`` (MAC), as the accelerator stores it.
    n_ch, n_pix : int
        Channels and pixels of the input map.
    cols : int
        Channels per buffer word (the main array's columns).
    weight, bias : array-like
        ``(n_out, n_ch * n_pix)`` weights (log codes for BM) and ``n_out`` biases.
    c_shift, out_shift : int
        The layer's correction and output shifts.

    Members
    -------
    wr_en, wr_addr, wr_data : In
        Buffer write port: ``wr_data`` (``cols`` words) goes to ``wr_addr`` when ``wr_en``.
    start : In(1)
        One-cycle pulse: the buffer holds a whole map; ignored while ``busy``.
    busy : Out(1)
    o : Out(stream.Signature(signed(32)))
        ``n_out`` logits per map, in output order.
    """

    def __init__(self, params, word, *, n_ch: int, n_pix: int, cols: int, weight, bias,
                 c_shift: int, out_shift: int):
        self.params = params
        self.bm = isinstance(params, BMParams)
        self.word = word
        self.n_ch, self.n_pix, self.cols = n_ch, n_pix, cols
        self.fan_in = n_ch * n_pix
        weight = np.asarray(weight).reshape(-1, self.fan_in)
        self.n_out = weight.shape[0]
        self.weight = weight[:, fc_step_order(n_ch, n_pix, cols)]
        self.bias = [int(b) for b in np.asarray(bias).reshape(-1)]
        if len(self.bias) != self.n_out:
            raise ValueError(f"{self.n_out} outputs but {len(self.bias)} biases")
        self.c_shift, self.out_shift = c_shift, out_shift
        self.depth = math.ceil(n_ch / cols) * n_pix
        super().__init__({
            "wr_en": In(1),
            "wr_addr": In(range(self.depth)),
            "wr_data": In(data.ArrayLayout(word, cols)),
            "start": In(1),
            "busy": Out(1),
            "o": Out(stream.Signature(signed(32))),
        })

    @property
    def cycles(self) -> int:
        return fc_cycles(self.params, self.fan_in, self.n_out)

    def elaborate(self, platform):
        p, C, N = self.params, self.cols, self.n_out
        m = Module()
        m.submodules.array = arr = SystolicArray(p, rows=1, cols=N)
        m.submodules.requant = rq = Requant(p, lanes=N, max_fan_in=self.fan_in, relu=False)

        m.submodules.buf = buf = Memory(shape=data.ArrayLayout(self.word, C), depth=self.depth,
                                        init=[])
        wp = buf.write_port()
        rp = buf.read_port()
        m.d.comb += [wp.en.eq(self.wr_en), wp.addr.eq(self.wr_addr), wp.data.eq(self.wr_data)]
        b_shape = signed(p.w_log_bits) if self.bm else signed(p.w_bits)
        wports = []
        for o in range(N):
            mem = Memory(shape=b_shape, depth=self.fan_in,
                         init=[int(v) for v in self.weight[o]])
            m.submodules[f"wmem{o}"] = mem
            wports.append(mem.read_port())

        # -- step counters (stage A) and memory outputs (stage B) --------------------------------
        busy = Signal()
        run = Signal()
        addr = Signal(range(self.depth))
        ch = Signal(range(C))
        k = Signal(range(self.fan_in))
        bv = Signal()
        b_ch = Signal(range(C))
        b_last = Signal()
        transfer = Signal()
        adv = Signal()
        m.d.comb += [
            self.busy.eq(busy),
            arr.i.valid.eq(bv),
            transfer.eq(bv & arr.i.ready),
            adv.eq(~bv | transfer),
            rp.addr.eq(addr),
            rp.en.eq(adv),
        ]
        for wport in wports:
            m.d.comb += [wport.addr.eq(k), wport.en.eq(adv)]
        n_groups = math.ceil(self.n_ch / C)
        last_ncol = self.n_ch - (n_groups - 1) * C
        ch_m1 = Signal(range(C))
        m.d.comb += ch_m1.eq(Mux(addr >= (n_groups - 1) * self.n_pix, last_ncol - 1, C - 1))

        s_bits = window_sum_bits(p, self.fan_in) if self.bm else 1
        s_acc = Signal(s_bits)
        with m.If(self.start & ~busy):
            m.d.sync += [busy.eq(1), run.eq(1), addr.eq(0), ch.eq(0), k.eq(0), s_acc.eq(0)]
        with m.If(adv):
            m.d.sync += bv.eq(run)
            with m.If(run):
                m.d.sync += [b_ch.eq(ch), b_last.eq(k == self.fan_in - 1), k.eq(k + 1)]
                with m.If(ch == ch_m1):
                    m.d.sync += [ch.eq(0), addr.eq(addr + 1)]
                with m.Else():
                    m.d.sync += ch.eq(ch + 1)
                with m.If(k == self.fan_in - 1):
                    m.d.sync += run.eq(0)

        word = Signal(self.word)
        with m.Switch(b_ch):
            for c in range(C):
                with m.Case(c):
                    m.d.comb += word.eq(rp.data[c])
        if self.bm:
            m.d.comb += [arr.i.payload.a[0].lx.eq(word.lx),
                         arr.i.payload.a[0].zero.eq((word.x == 0) if p.dx == 0 else 0)]
        else:
            m.d.comb += arr.i.payload.a[0].eq(word.x)
        for o, wport in enumerate(wports):
            m.d.comb += arr.i.payload.b[o].eq(wport.data)
        m.d.comb += arr.i.payload.last.eq(b_last)

        # the window sum, one register stage behind the array input (final long before the
        # array's one result row reaches the requantization)
        if self.bm:
            c_valid = Signal()
            c_x = Signal.like(word.x)
            m.d.sync += c_valid.eq(transfer)
            with m.If(transfer):
                m.d.sync += c_x.eq(word.x)
            with m.If(c_valid):
                m.d.sync += s_acc.eq(s_acc + c_x)

        # -- exp, requantization, logits ----------------------------------------------------------
        if self.bm:
            from .logexp import ExpUnit

            m.submodules.exp = ex = ExpUnit(p, lanes=N)
            m.d.comb += [
                ex.i.payload.eq(arr.o.payload.acc),
                ex.i.valid.eq(arr.o.valid),
                arr.o.ready.eq(ex.i.ready),
                rq.i.valid.eq(ex.o.valid),
                ex.o.ready.eq(rq.i.ready),
                rq.i.payload.e.eq(ex.o.payload),
                rq.i.payload.s.eq(s_acc),
                rq.c_shift.eq(self.c_shift),
            ]
        else:
            m.d.comb += [
                rq.i.payload.acc.eq(arr.o.payload.acc),
                rq.i.valid.eq(arr.o.valid),
                arr.o.ready.eq(rq.i.ready),
            ]
        for o in range(N):
            m.d.comb += rq.i.payload.bias[o].eq(self.bias[o])
        m.d.comb += rq.out_shift.eq(self.out_shift)

        logits = Signal(data.ArrayLayout(signed(rq.out_bits), N))
        sending = Signal()
        n_out = Signal(range(N))
        m.d.comb += [rq.o.ready.eq(~sending), self.o.valid.eq(sending)]
        with m.If(rq.o.valid & ~sending):
            m.d.sync += [logits.eq(rq.o.payload), sending.eq(1), n_out.eq(0)]
        with m.Switch(n_out):
            for o in range(N):
                with m.Case(o):
                    m.d.comb += self.o.payload.eq(logits[o])
        with m.If(self.o.valid & self.o.ready):
            with m.If(n_out == N - 1):
                m.d.sync += [sending.eq(0), busy.eq(0)]
            with m.Else():
                m.d.sync += n_out.eq(n_out + 1)
        return m
