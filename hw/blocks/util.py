"""Small helpers shared by the generators: table lookups, pipeline stalls, params checks."""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from model.params import BMParams, MACParams

__all__ = ["RegisterSlice", "rom", "stall_pipeline", "check_params", "check_count"]


def rom(m: Module, index, table, shape, *, name: str = "rom") -> Signal:
    """Combinational lookup ``table[index]`` built as a case statement (LUTs, never block RAM).

    Indices past the end of ``table`` read 0.
    """
    out = Signal(shape, name=name)
    with m.Switch(index):
        for k, v in enumerate(table):
            with m.Case(k):
                m.d.comb += out.eq(v)
    return out


def stall_pipeline(m: Module, i, o, stages: int) -> tuple[Signal, list[Signal]]:
    """Valid bits of a ``stages``-deep stall-all pipeline from stream ``i`` to stream ``o``.

    Returns ``(en, valid)``: every pipeline register must load only while ``en``; ``valid[k]``
    is the valid bit after stage ``k``. The whole pipeline stalls while ``o`` holds a beat that
    is not taken, so ``i.ready`` is ``en`` and does not depend on ``i.valid``.
    """
    en = Signal(name="en")
    valid = [Signal(name=f"valid{k}") for k in range(stages)]
    m.d.comb += [
        en.eq(~o.valid | o.ready),
        i.ready.eq(en),
        o.valid.eq(valid[-1]),
    ]
    with m.If(en):
        m.d.sync += valid[0].eq(i.valid)
        for k in range(1, stages):
            m.d.sync += valid[k].eq(valid[k - 1])
    return en, valid


class RegisterSlice(wiring.Component):
    """A two-entry register slice on a stream: full throughput, one cycle of latency.

    ``o.valid`` and ``i.ready`` both come from registers, so no handshake path runs through
    the slice: put one between two stall-all pipelines and each one's enable depends on its own
    registers and the slice's only. A beat taken on ``i`` is on ``o`` the next cycle; when ``o``
    stalls, the beat in flight waits in the second (skid) register and ``i.ready`` goes low.

    Members
    -------
    i : In(stream.Signature(shape))
    o : Out(stream.Signature(shape))
    """

    latency = 1
    """A beat taken on ``i`` is on ``o`` the next cycle."""

    def __init__(self, shape):
        self._shape = shape
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        skid = Signal(self._shape, reset_less=True)
        skid_v = Signal()
        out = Signal(self._shape, reset_less=True)
        out_v = Signal()
        m.d.comb += [
            self.i.ready.eq(~skid_v),
            self.o.valid.eq(out_v),
            self.o.payload.eq(out),
        ]
        with m.If(~out_v | self.o.ready):
            with m.If(skid_v):
                m.d.sync += [out.eq(skid), out_v.eq(1), skid_v.eq(0)]
            with m.Else():
                m.d.sync += [out.eq(self.i.payload), out_v.eq(self.i.valid)]
        with m.Elif(self.i.valid & ~skid_v):
            m.d.sync += [skid.eq(self.i.payload), skid_v.eq(1)]
        return m


def check_params(params, kinds: tuple[type, ...] = (BMParams, MACParams), *, block: str = ""):
    """Raise TypeError unless ``params`` is one of ``kinds`` (named in the message)."""
    if not isinstance(params, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        where = f"{block} " if block else ""
        raise TypeError(f"{where}params must be {names}, not {params!r}")
    return params


def check_count(name: str, value, minimum: int = 1) -> int:
    """Raise ValueError unless ``value`` is an int >= ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, not {value!r}")
    return value
