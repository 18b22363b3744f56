"""Small helpers shared by the generators: table lookups, pipeline stalls, params checks."""

from __future__ import annotations

from amaranth.hdl import Module, Signal

from model.params import BMParams, MACParams

__all__ = ["rom", "stall_pipeline", "check_params", "check_count"]


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
