"""The shifted log/exp lookup units of the BM datapath (see :mod:`model.reference`, steps 1 and 4).

:class:`LogUnit` turns activation codes into fixed-point ``log2(x + dx)`` codes with a zero flag;
:class:`ExpUnit` turns a branch maximum ``M`` back into an unsigned ``2**(M / 2**f)``. Both are
stall-all pipelines with ``lanes`` independent lanes per beat, bit-exact with ``ref_log`` and
``ref_exp``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from model.params import BMParams

from .util import check_count, check_params, rom, stall_pipeline

__all__ = ["log_layout", "branch_layout", "LogUnit", "ExpUnit"]


def log_layout(p: BMParams) -> data.StructLayout:
    """``{lx: unsigned(lx_bits), zero: 1}``: an activation log code and its zero flag."""
    return data.StructLayout({"lx": unsigned(p.lx_bits), "zero": 1})


def branch_layout(p: BMParams) -> data.StructLayout:
    """``{m: signed(m_bits), zero: 1}``: a branch maximum ``M`` and its all-inputs-zero flag."""
    return data.StructLayout({"m": signed(p.m_bits), "zero": 1})


def _lx_max(p: BMParams) -> int:
    """Largest ``Lx`` the log unit can produce."""
    return (p.u_bits - 1 << p.log_frac) + max(p.log_table)


class LogUnit(wiring.Component):
    """Fixed-point ``log2(x + dx)`` of unsigned activation codes.

    ``u = x + dx``; a leading-one detector finds ``e``, the bits below the leading one are
    left-aligned and truncated to ``mant_bits`` bits ``m`` (zero-filled when fewer exist), and
    ``Lx = e * 2**log_frac + LOG[m]`` with the mantissa table :func:`model.params.log_table`.
    ``u == 0`` sets ``zero`` and gives ``Lx = 0``. There is no rounding or overflow: every
    ``Lx`` fits ``lx_bits`` (checked at construction). Equal to :func:`model.reference.ref_log`.

    Parameters
    ----------
    params : BMParams
        The code width, ``dx`` and the mantissa table's size and resolution.
    lanes : int
        Codes per beat, each with its own log unit.

    Members
    -------
    i : In(stream.Signature(ArrayLayout(unsigned(a_bits), lanes)))
        Activation codes.
    o : Out(stream.Signature(ArrayLayout(log_layout(params), lanes)))
        ``{lx, zero}`` per lane, :attr:`latency` cycles after the code was taken.
    """

    def __init__(self, params: BMParams, *, lanes: int = 1):
        self.params = check_params(params, (BMParams,), block="LogUnit")
        self.lanes = check_count("lanes", lanes)
        if _lx_max(params) >= 1 << params.lx_bits:
            raise ValueError(
                f"the largest log code {_lx_max(params)} does not fit lx_bits={params.lx_bits} "
                f"for {params!r}"
            )
        super().__init__(
            {
                "i": In(stream.Signature(data.ArrayLayout(unsigned(params.a_bits), lanes))),
                "o": Out(stream.Signature(data.ArrayLayout(log_layout(params), lanes))),
            }
        )

    latency = 2
    """Cycles from a code taken on ``i`` to its log on ``o`` (with ``o.ready`` high)."""

    def elaborate(self, platform):
        p = self.params
        m = Module()
        en, _ = stall_pipeline(m, self.i, self.o, self.latency)
        mb = p.mant_bits
        for lane in range(self.lanes):
            u = Signal(p.u_bits, name=f"u{lane}")
            m.d.comb += u.eq(self.i.payload[lane] + p.dx)
            # stage 1: leading-one detector and mantissa alignment
            e_c = Signal(range(p.u_bits), name=f"e_c{lane}")
            mant_c = Signal(mb, name=f"mant_c{lane}")
            for k in range(p.u_bits):  # later assignments win: the highest set bit
                below = u[k - mb : k] if k >= mb else Cat(Const(0, mb - k), u[:k])
                with m.If(u[k]):
                    m.d.comb += [e_c.eq(k), mant_c.eq(below)]
            e = Signal.like(e_c, name=f"e{lane}")
            mant = Signal.like(mant_c, name=f"mant{lane}")
            zero = Signal(name=f"zero{lane}")
            with m.If(en):
                m.d.sync += [e.eq(e_c), mant.eq(mant_c), zero.eq(u == 0)]
            # stage 2: mantissa table, integer part
            frac = rom(m, mant, p.log_table, range(max(p.log_table) + 1), name=f"logtab{lane}")
            out = self.o.payload[lane]
            with m.If(en):
                m.d.sync += [
                    out.lx.eq(((e << p.log_frac) + frac) & ~zero.replicate(p.lx_bits)),
                    out.zero.eq(zero),
                ]
        return m


class ExpUnit(wiring.Component):
    """Unsigned, saturating ``2**(M / 2**log_frac)`` of a branch maximum.

    ``q = M >> log_frac`` (floor), ``r = M mod 2**log_frac``, ``v = EXP[r]`` from
    :func:`model.params.exp_table` (``t = exp_table_bits`` fractional bits). The result is
    ``v << (q - t)`` when ``q >= t`` and ``v >> (t - q)`` (floor, bits shifted out are dropped)
    otherwise. A result above ``2**exp_bits - 1`` saturates to that value. A flagged ``zero``
    gives 0. Equal to :func:`model.reference.ref_exp`.

    Parameters
    ----------
    params : BMParams
    lanes : int
        Values per beat, each with its own exp unit.

    Members
    -------
    i : In(stream.Signature(ArrayLayout(branch_layout(params), lanes)))
        ``{m, zero}`` per lane: the branch maxima from the array.
    o : Out(stream.Signature(ArrayLayout(unsigned(exp_bits), lanes)))
        ``E`` per lane, :attr:`latency` cycles after ``M`` was taken.
    """

    def __init__(self, params: BMParams, *, lanes: int = 1):
        self.params = check_params(params, (BMParams,), block="ExpUnit")
        self.lanes = check_count("lanes", lanes)
        super().__init__(
            {
                "i": In(stream.Signature(data.ArrayLayout(branch_layout(params), lanes))),
                "o": Out(stream.Signature(data.ArrayLayout(unsigned(params.exp_bits), lanes))),
            }
        )

    latency = 2
    """Cycles from an ``M`` taken on ``i`` to its ``E`` on ``o`` (with ``o.ready`` high)."""

    def elaborate(self, platform):
        p = self.params
        m = Module()
        en, _ = stall_pipeline(m, self.i, self.o, self.latency)
        f, t = p.log_frac, p.exp_table_bits
        v_max = max(p.exp_table)
        v_bits = v_max.bit_length()
        s_min = (-(1 << (p.m_bits - 1)) >> f) - t
        s_max = (((1 << (p.m_bits - 1)) - 1) >> f) - t
        for lane in range(self.lanes):
            mi = self.i.payload[lane]
            # stage 1: table lookup and shift distance
            v_c = rom(m, mi.m[:f], p.exp_table, range(v_max + 1), name=f"exptab{lane}")
            v = Signal.like(v_c, name=f"v{lane}")
            s = Signal(range(s_min, s_max + 1), name=f"s{lane}")
            zero = Signal(name=f"zero{lane}")
            with m.If(en):
                m.d.sync += [v.eq(v_c), s.eq((mi.m >> f) - t), zero.eq(mi.zero)]
            # stage 2: barrel shift left (saturating) or right (floor)
            res = Signal(p.exp_bits, name=f"res{lane}")
            if s_max >= 0:
                sl = Signal(range(p.exp_bits + 1), name=f"sl{lane}")
                m.d.comb += sl.eq(s.as_unsigned())
                with m.If(s > p.exp_bits):
                    m.d.comb += sl.eq(p.exp_bits)
                wide = Signal(v_bits + p.exp_bits, name=f"wide{lane}")
                m.d.comb += wide.eq(v << sl)
            sr = Signal(range(v_bits + 1), name=f"sr{lane}")
            m.d.comb += sr.eq(-s)
            with m.If(-s > v_bits):
                m.d.comb += sr.eq(v_bits)
            if s_max >= 0:
                with m.If(s >= 0):
                    with m.If(wide > p.exp_max):
                        m.d.comb += res.eq(p.exp_max)
                    with m.Else():
                        m.d.comb += res.eq(wide)
                with m.Else():
                    m.d.comb += res.eq(v >> sr)
            else:
                m.d.comb += res.eq(v >> sr)
            with m.If(en):
                m.d.sync += self.o.payload[lane].eq(res & ~zero.replicate(p.exp_bits))
        return m
