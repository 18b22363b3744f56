"""Processing elements: one lane of the systolic array, BM (max-plus) or MAC (multiply-add).

Both kinds have the same interface, so :class:`hw.blocks.array.SystolicArray` is generic over them.
Each cycle a PE takes one operand pair ``(a, b)`` and a ``first`` flag and updates its
accumulator::

    acc <- a (x) b              when first
    acc <- acc (+) (a (x) b)    otherwise

with ``(x), (+) = +, max`` for BM and ``*, +`` for MAC. The PE is the whole per-lane arithmetic
that an array replicates; its operand pass-through and drain registers belong to the array.
:func:`pe_class` picks the kind from the params object.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from model.params import BMParams, MACParams

from .logexp import branch_layout, log_layout
from .util import check_params

__all__ = ["BMPE", "MACPE", "pe_class"]


class BMPE(wiring.Component):
    """Max-plus processing element: an adder, a comparator and a max register.

    ``s = a.lx + b`` is exact (``m_bits`` wide, no overflow). A sum whose ``a.zero`` flag is
    set is minus infinity: it never wins the maximum. ``acc.zero`` is set while every input
    since ``first`` was flagged; ``acc.m`` is then meaningless (the array reports it as 0).

    Parameters
    ----------
    params : BMParams

    Members
    -------
    a : In(log_layout(params))
        ``{lx, zero}`` from the log unit.
    b : In(signed(w_log_bits))
        Weight log code ``Lw``.
    first : In(1)
        Start a new maximum with this operand pair.
    acc : Out(branch_layout(params))
        ``{m, zero}``: the running ``max(Lx + Lw)``, updated one cycle after its operands.
    """

    neutral_a = {"lx": 0, "zero": 1}
    """An ``a`` operand that leaves the accumulator unchanged (a bubble)."""

    def __init__(self, params: BMParams):
        self.params = check_params(params, (BMParams,), block="BMPE")
        super().__init__(
            {
                "a": In(log_layout(params)),
                "b": In(signed(params.w_log_bits)),
                "first": In(1),
                "acc": Out(branch_layout(params)),
            }
        )

    @staticmethod
    def a_shape(p: BMParams):
        return log_layout(p)

    @staticmethod
    def b_shape(p: BMParams):
        return signed(p.w_log_bits)

    @staticmethod
    def acc_shape(p: BMParams):
        return branch_layout(p)

    latency = 1
    """Cycles from an operand pair to the accumulator that includes it."""

    def elaborate(self, platform):
        m = Module()
        acc = Signal(self.acc.shape(), reset_less=True)  # `first` starts every maximum
        m.d.comb += self.acc.eq(acc)
        s = self.a.lx + self.b
        take = self.first | (~self.a.zero & (acc.zero | (s > acc.m)))
        with m.If(take):
            m.d.sync += [acc.m.eq(s), acc.zero.eq(self.a.zero)]
        return m


class MACPE(wiring.Component):
    """Multiply-accumulate processing element: a multiplier, an adder and a register.

    ``acc`` wraps modulo ``2**acc_bits`` (two's complement); the reference checks that no layer
    of a network can reach that.

    Parameters
    ----------
    params : MACParams
        The activation, weight and accumulator widths.

    Members
    -------
    a : In(unsigned(a_bits))
        Activation code.
    b : In(signed(w_bits))
        Weight.
    first : In(1)
        Start a new sum with this operand pair.
    acc : Out(signed(acc_bits))
        The running ``sum(a * b)``, updated one cycle after its operands.
    """

    neutral_a = 0
    """An ``a`` operand that leaves the accumulator unchanged (a bubble)."""

    def __init__(self, params: MACParams):
        self.params = check_params(params, (MACParams,), block="MACPE")
        super().__init__(
            {
                "a": In(unsigned(params.a_bits)),
                "b": In(signed(params.w_bits)),
                "first": In(1),
                "acc": Out(signed(params.acc_bits)),
            }
        )

    @staticmethod
    def a_shape(p: MACParams):
        return unsigned(p.a_bits)

    @staticmethod
    def b_shape(p: MACParams):
        return signed(p.w_bits)

    @staticmethod
    def acc_shape(p: MACParams):
        return signed(p.acc_bits)

    latency = 1
    """Cycles from an operand pair to the accumulator that includes it."""

    def elaborate(self, platform):
        m = Module()
        acc = Signal(self.acc.shape(), reset_less=True)  # `first` starts every sum
        m.d.comb += self.acc.eq(acc)
        m.d.sync += acc.eq(Mux(self.first, 0, acc) + self.a * self.b)
        return m


def pe_class(params) -> type[BMPE] | type[MACPE]:
    """The processing-element class for ``params``."""
    check_params(params)
    return BMPE if isinstance(params, BMParams) else MACPE
