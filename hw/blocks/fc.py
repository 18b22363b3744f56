"""The network's linear classifier on its own small engine, beside the main array.

On the 16 x 16 array a linear layer is one pixel: one array row of sixteen does useful work, so
the paper LeNet's ``Linear(5184, 10)`` takes 5,184 cycles of a 31,000-cycle image while using a
sixteenth of the array. :class:`FCEngine` takes it off the array: one lane per output, its own
exp unit and requantization, and its own copy of its input map.

Dataflow
--------
* **Input buffer.** While the array runs the layer before the classifier (the *feeder*), the
  accelerator's write stage also writes each output row (one pixel, ``cols`` channels, codes
  and logs) into the engine's buffer, one word per row: group ``g`` of the feeder, pixel ``q``
  at address ``g * n_pix + q``. The feeder writes nowhere else.
* **Steps.** After ``start`` the engine reads one buffer word per ``ncol`` cycles and streams
  its channels, one per cycle, into its lanes; each lane reads its own weight memory. The
  weights are stored in that step order (channel within pixel), which is a permutation of the
  layer's ``(channel, y, x)`` order: the max-plus maxima, the sums and the window sum do not
  depend on the order, so the result is the reference's, exactly.
* **After the last step** the one row of ``n_out`` results goes through the requantization;
  the logits leave on ``o`` one per cycle.

Heads (``neuron``, :data:`FC_HEADS`; see :mod:`model.reference`, "The classifier heads")
---------------------------------------------------------------------------------------
``bm15`` (and every MAC network)
    A ``1 x n_out`` :class:`hw.blocks.array.SystolicArray` of the main array's processing elements;
    after it the exp unit (BM) and the requantization with the window sum ``S`` of the map.
``lns``
    Per lane: the adder ``Lx + Lw`` (a register), the exp unit (:class:`hw.blocks.logexp.ExpUnit`,
    one lane per output; 0 for a flagged input), the conditional negate by the weight's sign
    bit (``e XOR s`` with ``s`` as the carry in) and a signed accumulator of
    :func:`model.reference.lns_acc_bits` bits, which holds every sum exactly (no wrap, no
    saturation). The requantization adds the bias (:class:`hw.blocks.requant.Requant`,
    ``sum_bits``).
``bm2``
    Per lane: the adder ``Lx + Lw`` (a register), then two max registers with their empty
    flags, one per weight sign: the sum goes to the register its weight's sign bit selects and
    replaces it when larger (a flagged input goes nowhere). After the last step the two maxima
    go through the exp unit (two lanes per output; an empty branch gives 0), their difference
    and the bias (:func:`model.reference.bm2_acc_bits` bits) to the requantization.

A signed head's weight memory holds ``{lw, sign}`` words (``Lw`` in the low ``w_log_bits``,
the sign bit above it). There is no multiplier in any head.

The accelerator starts the engine when the feeder's last row is written and goes on to the
next image (with ``overlap``) or waits for the logits; ``busy`` is high from ``start`` until
the last logit is taken, and the accelerator does not start the next feeder layer while it is
high, so the buffer is never overwritten while it is read.

Cycle model: see :func:`fc_cycles`.
"""

from __future__ import annotations

import math

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from model.params import BMParams, LayerSpec
from model.reference import bm2_acc_bits, lns_acc_bits

from .array import SystolicArray, array_latency
from .logexp import ExpUnit
from .requant import Requant, window_sum_bits

__all__ = ["FC_HEADS", "FCEngine", "fc_cycles", "fc_step_order", "head_acc_bits"]

FC_HEADS = ("bm15", "lns", "bm2")
"""The classifier neurons the engine builds (``LayerSpec.neuron``)."""

# cycles from ``start`` to the first beat out of the memories: the start register, the counter
# stage and the memory read
FC_START = 2
EXP_LATENCY = ExpUnit.latency
REQUANT_LATENCY = Requant.latency
# a signed head, from its last beat out of the memories to its sums at the requantization:
# the branch-sum register, then lns: the exp unit and the accumulator; bm2: the two maxima
# and the exp unit
HEAD_TAIL = {"lns": 1 + EXP_LATENCY + 1, "bm2": 1 + 1 + EXP_LATENCY}


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


def _check_head(params, neuron: str) -> str:
    if neuron not in FC_HEADS:
        raise ValueError(
            f"the FC engine builds the heads {', '.join(FC_HEADS)}, not {neuron!r}")
    if neuron != "bm15" and not isinstance(params, BMParams):
        raise ValueError(f"a {neuron!r} head needs BM params, not {type(params).__name__}")
    return neuron


def head_acc_bits(params: BMParams, fan_in: int, n_out: int, neuron: str) -> int:
    """Signed width of a signed head's sum with its bias (``lns``: :func:`lns_acc_bits`,
    ``bm2``: :func:`bm2_acc_bits`)."""
    spec = LayerSpec("linear", fan_in, n_out, relu=False, neuron=neuron)
    return lns_acc_bits(params, spec) if neuron == "lns" else bm2_acc_bits(params, spec)


def fc_cycles(params, fan_in: int, n_out: int, neuron: str = "bm15") -> int:
    """Cycles from ``start`` high to the last logit taken, with a sink that is always ready.

    ``FC_START + fan_in + tail + REQUANT_LATENCY + n_out``: one step per cycle, then ``tail``
    from the last step out of the memories to the requantization (``bm15``: the array's
    latency and, for BM, the exp unit, 4 + 2; ``lns`` and ``bm2``: 4, see ``HEAD_TAIL``), and
    one cycle per logit. For the paper LeNet's ``Linear(5184, 10)`` that is 5,205 cycles with
    the ``bm15`` head and 5,203 with ``lns`` or ``bm2``.
    """
    _check_head(params, neuron)
    if neuron == "bm15":
        tail = array_latency(1, n_out) + (EXP_LATENCY if isinstance(params, BMParams) else 0)
    else:
        tail = HEAD_TAIL[neuron]
    return FC_START + fan_in + tail + REQUANT_LATENCY + n_out


class FCEngine(wiring.Component):
    """A linear layer of ``n_out`` outputs over a ``n_ch x n_pix`` map, one lane per output;
    see the module documentation.

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
        ``(n_out, n_ch * n_pix)`` weights (log codes for BM; magnitude codes for a signed
        head) and ``n_out`` biases.
    c_shift, out_shift : int
        The layer's correction and output shifts (``c_shift`` is 0 for a signed head).
    neuron : str
        The head, one of :data:`FC_HEADS` (``"bm15"`` for MAC).
    sign : array-like or None
        ``lns`` and ``bm2``: ``(n_out, n_ch * n_pix)`` weight signs, 0 (positive) or 1.

    Members
    -------
    wr_en, wr_addr, wr_data : In
        Buffer write port: ``wr_data`` (``cols`` words) goes to ``wr_addr`` when ``wr_en``.
    start : In(1)
        One-cycle pulse: the buffer holds a whole map; ignored while ``busy``.
    busy : Out(1)
    o : Out(stream.Signature(signed(32)))
        ``n_out`` logits per map, in output order, :attr:`cycles` after ``start`` (sink ready).
    """

    def __init__(self, params, word, *, n_ch: int, n_pix: int, cols: int, weight, bias,
                 c_shift: int, out_shift: int, neuron: str = "bm15", sign=None):
        self.params = params
        self.bm = isinstance(params, BMParams)
        self.neuron = _check_head(params, neuron)
        self.signed_head = neuron != "bm15"
        self.word = word
        self.n_ch, self.n_pix, self.cols = n_ch, n_pix, cols
        self.fan_in = n_ch * n_pix
        order = fc_step_order(n_ch, n_pix, cols)
        weight = np.asarray(weight).reshape(-1, self.fan_in)
        self.n_out = weight.shape[0]
        self.weight = weight[:, order]
        self.bias = [int(b) for b in np.asarray(bias).reshape(-1)]
        if len(self.bias) != self.n_out:
            raise ValueError(f"{self.n_out} outputs but {len(self.bias)} biases")
        if self.signed_head:
            if sign is None:
                raise ValueError(f"a {neuron!r} head needs a sign per weight")
            sign = np.asarray(sign)
            if sign.size != self.weight.size or np.any((sign < 0) | (sign > 1)):
                raise ValueError(
                    f"a {neuron!r} head needs {self.n_out} x {self.fan_in} signs of 0 or 1")
            if c_shift != 0:
                raise ValueError(f"a {neuron!r} head has no c_shift, not {c_shift!r}")
            self.sign = sign.reshape(self.n_out, self.fan_in)[:, order]
            self.acc_bits = head_acc_bits(params, self.fan_in, self.n_out, neuron)
        elif sign is not None:
            raise ValueError("a bm15 head has no weight signs")
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
        """:func:`fc_cycles`: ``start`` to the last logit taken."""
        return fc_cycles(self.params, self.fan_in, self.n_out, self.neuron)

    @property
    def weight_layout(self):
        """One word of a lane's weight memory."""
        p = self.params
        if self.signed_head:
            return data.StructLayout({"lw": signed(p.w_log_bits), "sign": 1})
        return signed(p.w_log_bits) if self.bm else signed(p.w_bits)

    def _weight_words(self, o: int) -> list:
        if self.signed_head:
            return [{"lw": int(w), "sign": int(s)}
                    for w, s in zip(self.weight[o], self.sign[o], strict=True)]
        return [int(v) for v in self.weight[o]]

    def elaborate(self, platform):
        C, N = self.cols, self.n_out
        m = Module()
        m.submodules.buf = buf = Memory(shape=data.ArrayLayout(self.word, C), depth=self.depth,
                                        init=[])
        wp = buf.write_port()
        rp = buf.read_port()
        m.d.comb += [wp.en.eq(self.wr_en), wp.addr.eq(self.wr_addr), wp.data.eq(self.wr_data)]
        wports = []
        for o in range(N):
            mem = Memory(shape=self.weight_layout, depth=self.fan_in, init=self._weight_words(o))
            m.submodules[f"wmem{o}"] = mem
            wports.append(mem.read_port())

        # -- step counters (stage A) and memory outputs (stage B) --------------------------------
        busy = Signal()
        go = Signal()  # the start of a run
        run = Signal()
        addr = Signal(range(self.depth))
        ch = Signal(range(C))
        k = Signal(range(self.fan_in))
        bv = Signal()
        b_ch = Signal(range(C))
        b_last = Signal()
        ready = Signal()  # the lanes take the beat at stage B
        transfer = Signal()
        adv = Signal()
        m.d.comb += [
            self.busy.eq(busy),
            go.eq(self.start & ~busy),
            transfer.eq(bv & ready),
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

        with m.If(go):
            m.d.sync += [busy.eq(1), run.eq(1), addr.eq(0), ch.eq(0), k.eq(0)]
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
        wdata = [wport.data for wport in wports]

        # -- the lanes, up to the requantization ---------------------------------------------------
        if self.neuron == "bm15":
            rq = self._elaborate_array(m, go, bv, ready, transfer, word, wdata, b_last)
        else:
            m.d.comb += ready.eq(1)  # a lane takes one step every cycle
            beat = self._branch_sums(m, transfer, word, wdata, b_last)
            if self.neuron == "lns":
                rq = self._elaborate_lns(m, go, beat)
            else:
                rq = self._elaborate_bm2(m, go, beat)
        for o in range(N):
            m.d.comb += rq.i.payload.bias[o].eq(self.bias[o])
        m.d.comb += rq.out_shift.eq(self.out_shift)

        # -- logits ------------------------------------------------------------------------------
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

    def _zero(self, word):
        """The zero flag of a stored activation (``x + dx == 0``), recomputed from the code."""
        return (word.x == 0) if self.params.dx == 0 else Const(0, 1)

    # -- bm15 and MAC: the processing-element array ------------------------------------------------
    def _elaborate_array(self, m, go, bv, ready, transfer, word, wdata, b_last):
        p, N = self.params, self.n_out
        m.submodules.array = arr = SystolicArray(p, rows=1, cols=N)
        m.submodules.requant = rq = Requant(p, lanes=N, max_fan_in=self.fan_in, relu=False)
        m.d.comb += [arr.i.valid.eq(bv), ready.eq(arr.i.ready)]
        if self.bm:
            m.d.comb += [arr.i.payload.a[0].lx.eq(word.lx),
                         arr.i.payload.a[0].zero.eq(self._zero(word))]
        else:
            m.d.comb += arr.i.payload.a[0].eq(word.x)
        for o in range(N):
            m.d.comb += arr.i.payload.b[o].eq(wdata[o])
        m.d.comb += arr.i.payload.last.eq(b_last)
        if not self.bm:
            m.d.comb += [
                rq.i.payload.acc.eq(arr.o.payload.acc),
                rq.i.valid.eq(arr.o.valid),
                arr.o.ready.eq(rq.i.ready),
            ]
            return rq

        # the window sum, one register stage behind the array input (final long before the
        # array's one result row reaches the requantization)
        s_acc = Signal(window_sum_bits(p, self.fan_in))
        c_valid = Signal()
        c_x = Signal.like(word.x)
        with m.If(go):
            m.d.sync += s_acc.eq(0)
        m.d.sync += c_valid.eq(transfer)
        with m.If(transfer):
            m.d.sync += c_x.eq(word.x)
        with m.If(c_valid):
            m.d.sync += s_acc.eq(s_acc + c_x)

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
        return rq

    # -- the signed heads ----------------------------------------------------------------------
    def _branch_sums(self, m, transfer, word, wdata, b_last):
        """Stage C, one register behind the memories: per lane ``Lx + Lw`` and the weight's
        sign, with the input's zero flag, the beat's valid and its last flag."""
        p, N = self.params, self.n_out
        beat = {
            "valid": Signal(name="c_valid"),
            "last": Signal(name="c_last"),
            "zero": Signal(name="c_zero"),
            "m": [Signal(signed(p.m_bits), name=f"c_m{o}") for o in range(N)],
            "sign": [Signal(name=f"c_sign{o}") for o in range(N)],
        }
        m.d.sync += [beat["valid"].eq(transfer), beat["last"].eq(transfer & b_last)]
        with m.If(transfer):
            m.d.sync += beat["zero"].eq(self._zero(word))
            for o in range(N):
                m.d.sync += [beat["m"][o].eq(word.lx + wdata[o].lw),
                             beat["sign"][o].eq(wdata[o].sign)]
        return beat

    def _elaborate_lns(self, m, go, beat):
        """``acc = sum (-1)**s * EXP(Lx + Lw)``, then ``acc + bias`` in the requantization."""
        p, N, W = self.params, self.n_out, self.acc_bits
        m.submodules.exp = ex = ExpUnit(p, lanes=N)
        m.submodules.requant = rq = Requant(p, lanes=N, relu=False, sum_bits=W)
        m.d.comb += [ex.i.valid.eq(beat["valid"]), ex.o.ready.eq(1)]
        for o in range(N):
            m.d.comb += [ex.i.payload[o].m.eq(beat["m"][o]), ex.i.payload[o].zero.eq(beat["zero"])]

        def delay(x, name):
            """``x`` beside the exp unit (it never stalls: its sink is always ready)."""
            for d in range(ex.latency):
                y = Signal.like(x, name=f"{name}_d{d}")
                m.d.sync += y.eq(x)
                x = y
            return x

        e_last = delay(beat["last"], "e_last")
        acc = [Signal(signed(W), name=f"acc{o}") for o in range(N)]
        for o in range(N):
            s = delay(beat["sign"][o], f"e_sign{o}")
            # conditional negate without a second adder: -e = (e XOR 1...1) + 1, the +1 as the
            # carry in; the true sum fits W bits, so the W-bit result is exact
            e = Cat(ex.o.payload[o], Const(0, W - p.exp_bits)).as_signed()
            with m.If(go):
                m.d.sync += acc[o].eq(0)
            with m.Elif(ex.o.valid):
                m.d.sync += acc[o].eq(acc[o] + (e ^ s.replicate(W)).as_signed() + s)
        done = Signal()
        m.d.sync += done.eq(ex.o.valid & e_last)
        m.d.comb += rq.i.valid.eq(done)
        for o in range(N):
            m.d.comb += rq.i.payload.acc[o].eq(acc[o])
        return rq

    def _elaborate_bm2(self, m, go, beat):
        """``M+``, ``M-``: running maxima by sign, then ``EXP(M+) - EXP(M-)`` and the bias."""
        from .logexp import branch_layout

        p, N = self.params, self.n_out
        m.submodules.exp = ex = ExpUnit(p, lanes=2 * N)
        m.submodules.requant = rq = Requant(p, lanes=N, relu=False, sum_bits=self.acc_bits)
        done = Signal()  # the maxima include the last step
        m.d.sync += done.eq(beat["valid"] & beat["last"])
        m.d.comb += [ex.i.valid.eq(done), ex.o.ready.eq(1)]
        for o in range(N):
            for neg in (0, 1):
                br = Signal(branch_layout(p), name=f"{('maxp', 'maxn')[neg]}{o}")
                m.d.comb += ex.i.payload[2 * o + neg].eq(br)
                take = ((beat["sign"][o] == neg) & ~beat["zero"]
                        & (br.zero | (beat["m"][o] > br.m)))
                with m.If(go):
                    m.d.sync += br.zero.eq(1)  # empty until a sum of this sign arrives
                with m.Elif(beat["valid"] & take):
                    m.d.sync += [br.m.eq(beat["m"][o]), br.zero.eq(0)]
        m.d.comb += rq.i.valid.eq(ex.o.valid)
        for o in range(N):
            m.d.comb += rq.i.payload.acc[o].eq(ex.o.payload[2 * o] - ex.o.payload[2 * o + 1])
        return rq
