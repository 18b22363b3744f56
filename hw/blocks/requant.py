"""After the array: the input-window sum, correction and requantization, and max-pool.

:class:`WindowSum` computes ``S = sum x`` of each im2col window (an adder tree over the codes of
a beat, accumulated over the beats of the window). :class:`Requant` applies the BM correction
``acc = E - (S << c_shift) + bias`` (or the MAC ``acc + bias``), the rounding right shift and the
saturation (ReLU codes, or signed logits). :class:`MaxPool` is a comparator over a pool window.
All are stall-all pipelines, equal to :mod:`model.reference`.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from model.params import BMParams

from .util import check_count, check_params, stall_pipeline

__all__ = ["WindowSum", "Requant", "MaxPool", "window_sum_bits"]


def window_sum_bits(params, max_fan_in: int) -> int:
    """Width of ``S`` for windows of up to ``max_fan_in`` codes."""
    return max(1, (max_fan_in * params.a_max).bit_length())


def _tree(values):
    """Balanced adder tree."""
    values = list(values)
    while len(values) > 1:
        values = [
            values[k] + values[k + 1] if k + 1 < len(values) else values[k]
            for k in range(0, len(values), 2)
        ]
    return values[0]


class WindowSum(wiring.Component):
    """Sum of the raw activation codes of each input window (``ref_window_sum``).

    A window is one or more beats of ``lanes`` codes; the beat with ``last`` set ends it. The
    codes of a beat go through an adder tree and are added to the running sum. The sum is exact:
    windows longer than ``max_fan_in`` codes are outside the contract.

    Parameters
    ----------
    params : BMParams or MACParams
        Only ``a_bits`` is used.
    lanes : int
        Codes per beat.
    max_fan_in : int
        Most codes in one window; sets the output width :func:`window_sum_bits`.

    Members
    -------
    i : In(stream.Signature({x: ArrayLayout(unsigned(a_bits), lanes), last: 1}))
    o : Out(stream.Signature(unsigned(window_sum_bits(params, max_fan_in))))
        One ``S`` per window, :attr:`latency` cycles after its ``last`` beat.
    """

    def __init__(self, params, *, lanes: int = 1, max_fan_in: int = 5184):
        self.params = check_params(params, block="WindowSum")
        self.lanes = check_count("lanes", lanes)
        self.max_fan_in = check_count("max_fan_in", max_fan_in)
        self.s_bits = window_sum_bits(params, max_fan_in)
        layout = data.StructLayout(
            {
                "x": data.ArrayLayout(unsigned(params.a_bits), lanes),
                "last": 1,
            }
        )
        super().__init__(
            {
                "i": In(stream.Signature(layout)),
                "o": Out(stream.Signature(unsigned(self.s_bits))),
            }
        )

    @property
    def latency(self) -> int:
        """Cycles from a window's ``last`` beat taken to its sum on ``o``."""
        return 1

    def elaborate(self, platform):
        m = Module()
        acc = Signal(self.s_bits)
        total = Signal(self.s_bits)
        m.d.comb += [
            total.eq(acc + _tree(self.i.payload.x[k] for k in range(self.lanes))),
            self.i.ready.eq(~self.o.valid | self.o.ready),
        ]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            with m.If(self.i.payload.last):
                m.d.sync += [self.o.payload.eq(total), self.o.valid.eq(1), acc.eq(0)]
            with m.Else():
                m.d.sync += acc.eq(total)
        return m


class Requant(wiring.Component):
    """Correction and requantization of ``lanes`` output channels of one pixel.

    BM (``ref_correction`` then ``ref_requant``)::

        acc = E - (S << c_shift) + bias          exact
    MAC, and any arithmetic with ``sum_bits`` (the BM classifier heads, whose sums are made
    before the unit)::

        acc = acc_in + bias                      exact

    then ``y = (acc + 2**(out_shift - 1)) >> out_shift`` (arithmetic shift, round half up; no
    rounding term when ``out_shift == 0``; any ``out_shift`` at least as wide as ``acc`` gives 0)
    and, with ``relu``, ``y`` saturated to ``0 .. 2**a_bits - 1``, or without it to a signed
    ``acc_bits`` logit.

    Parameters
    ----------
    params : BMParams or MACParams
    lanes : int
        Channels per beat (one ``S`` per beat is shared by all of them).
    max_fan_in : int
        BM only: most codes in a window (the width of ``S``, :func:`window_sum_bits`).
    relu : bool or None
        Fix ``relu`` at elaboration (no ``relu`` port); ``None`` (default) makes it a port.
    sum_bits : int or None
        Take a finished signed sum ``acc_in`` of ``sum_bits`` bits instead of the arithmetic's
        own input: the ``{acc, bias}`` form for either arithmetic, ``acc_in + bias`` computed in
        ``sum_bits`` bits. The caller guarantees that it fits (the heads' widths
        :func:`model.reference.lns_acc_bits` and :func:`model.reference.bm2_acc_bits` hold
        the sum with the bias). ``None`` (default): the BM or MAC input above.

    Members
    -------
    i : In(stream.Signature(...))
        BM: ``{e: ArrayLayout(unsigned(exp_bits), lanes), s: unsigned(s_bits),
        bias: ArrayLayout(signed(bias_bits), lanes)}``.
        MAC: ``{acc: ArrayLayout(signed(acc_bits), lanes),
        bias: ArrayLayout(signed(bias_bits), lanes)}``.
        With ``sum_bits``: ``{acc: ArrayLayout(signed(sum_bits), lanes),
        bias: ArrayLayout(signed(bias_bits), lanes)}``.
    o : Out(stream.Signature(ArrayLayout(signed(max(acc_bits, a_bits + 1)), lanes)))
        Codes (``relu``) or logits, :attr:`latency` cycles after the beat was taken.
    c_shift : In(range(max_c_shift + 1))
        BM only (not with ``sum_bits``). Held constant while a layer streams, like the two below.
    out_shift : In(range(64))
    relu : In(1)
    """

    def __init__(self, params, *, lanes: int = 1, max_fan_in: int = 5184,
                 relu: bool | None = None, sum_bits: int | None = None):
        self.params = check_params(params, block="Requant")
        self.static_relu = relu
        self.lanes = check_count("lanes", lanes)
        self.max_fan_in = check_count("max_fan_in", max_fan_in)
        if sum_bits is not None and (check_count("sum_bits", sum_bits, 2) < params.bias_bits):
            raise ValueError(
                f"sum_bits must be >= bias_bits ({params.bias_bits}), not {sum_bits!r}")
        self.sum_bits = sum_bits
        p = params
        # the BM correction input (E and S), or a finished sum (MAC, or ``sum_bits``)
        self.bm = isinstance(p, BMParams) and sum_bits is None
        if sum_bits is not None:
            layout = data.StructLayout(
                {
                    "acc": data.ArrayLayout(signed(sum_bits), lanes),
                    "bias": data.ArrayLayout(signed(p.bias_bits), lanes),
                }
            )
            self.corr_bits = sum_bits
        elif self.bm:
            self.s_bits = window_sum_bits(p, max_fan_in)
            layout = data.StructLayout(
                {
                    "e": data.ArrayLayout(unsigned(p.exp_bits), lanes),
                    "s": unsigned(self.s_bits),
                    "bias": data.ArrayLayout(signed(p.bias_bits), lanes),
                }
            )
            self.corr_bits = max(p.exp_bits + 1, self.s_bits + p.max_c_shift + 1, p.bias_bits) + 2
        else:
            layout = data.StructLayout(
                {
                    "acc": data.ArrayLayout(signed(p.acc_bits), lanes),
                    "bias": data.ArrayLayout(signed(p.bias_bits), lanes),
                }
            )
            self.corr_bits = max(p.acc_bits, p.bias_bits) + 1
        self.out_bits = max(p.acc_bits, p.a_bits + 1)
        ports = {
            "i": In(stream.Signature(layout)),
            "o": Out(stream.Signature(data.ArrayLayout(signed(self.out_bits), lanes))),
            "out_shift": In(range(64)),
        }
        if relu is None:
            ports["relu"] = In(1)
        if self.bm:
            ports["c_shift"] = In(range(p.max_c_shift + 1))
        super().__init__(ports)

    latency = 3
    """Cycles from a beat taken on ``i`` to its results on ``o`` (with ``o.ready`` high)."""

    def elaborate(self, platform):
        p = self.params
        m = Module()
        en, _ = stall_pipeline(m, self.i, self.o, self.latency)
        W = self.corr_bits
        # shifts past the accumulator width all give 0; clamp them to keep the shifter small
        sh = Signal(range(W + 1))
        m.d.comb += sh.eq(Mux(self.out_shift > W, W, self.out_shift))
        rnd = Signal(W + 1)
        m.d.comb += rnd.eq((Const(1, W + 2) << sh) >> 1)
        if self.bm:
            shifted_s = Signal(self.s_bits + p.max_c_shift)
            m.d.comb += shifted_s.eq(self.i.payload.s << self.c_shift)
        lo, hi = -(1 << (p.acc_bits - 1)), (1 << (p.acc_bits - 1)) - 1
        for lane in range(self.lanes):
            # stage 1: correction and bias
            corr = Signal(signed(W), name=f"corr{lane}")
            with m.If(en):
                if self.bm:
                    m.d.sync += corr.eq(
                        self.i.payload.e[lane] - shifted_s + self.i.payload.bias[lane]
                    )
                else:
                    m.d.sync += corr.eq(self.i.payload.acc[lane] + self.i.payload.bias[lane])
            # stage 2: rounding right shift
            y = Signal(signed(W + 1), name=f"y{lane}")
            with m.If(en):
                m.d.sync += y.eq((corr + rnd.as_signed()) >> sh)
            # stage 3: saturation
            out = self.o.payload[lane]
            relu = self.relu if self.static_relu is None else int(self.static_relu)
            sat_code = Mux(y < 0, 0, Mux(y > p.a_max, p.a_max, y))
            sat_logit = Mux(y < lo, lo, Mux(y > hi, hi, y))
            with m.If(en):
                if self.static_relu is None:
                    m.d.sync += out.eq(Mux(relu, sat_code, sat_logit))
                else:
                    m.d.sync += out.eq(sat_code if relu else sat_logit)
        return m


class MaxPool(wiring.Component):
    """Max-pool comparator: the largest code of each lane over a pool window (``ref_maxpool``).

    A window is one or more beats; the beat with ``last`` set ends it. Lanes are independent
    (one per channel).

    Parameters
    ----------
    params : BMParams or MACParams
        Its ``a_bits`` is the width of the codes compared.
    lanes : int
        Channels per beat.

    Members
    -------
    i : In(stream.Signature({x: ArrayLayout(unsigned(a_bits), lanes), last: 1}))
    o : Out(stream.Signature(ArrayLayout(unsigned(a_bits), lanes)))
        One beat per window, :attr:`latency` cycles after its ``last`` beat.
    """

    def __init__(self, params, *, lanes: int = 1):
        self.params = check_params(params, block="MaxPool")
        self.lanes = check_count("lanes", lanes)
        codes = data.ArrayLayout(unsigned(params.a_bits), lanes)
        super().__init__(
            {
                "i": In(stream.Signature(data.StructLayout({"x": codes, "last": 1}))),
                "o": Out(stream.Signature(codes)),
            }
        )

    @property
    def latency(self) -> int:
        """Cycles from a window's ``last`` beat taken to its maximum on ``o``."""
        return 1

    def elaborate(self, platform):
        m = Module()
        first = Signal(init=1)
        best = Signal(data.ArrayLayout(unsigned(self.params.a_bits), self.lanes))
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += first.eq(self.i.payload.last)
            for k in range(self.lanes):
                x = self.i.payload.x[k]
                new = Mux(first | (x > best[k]), x, best[k])
                m.d.sync += [best[k].eq(new), self.o.payload[k].eq(new)]
            with m.If(self.i.payload.last):
                m.d.sync += self.o.valid.eq(1)
        return m
