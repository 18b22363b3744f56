"""The blocks that :mod:`hw.reports.report` measures, and the out-of-context wrapper it times
them in.

Three levels, each built for a :class:`model.params.BMParams` or a :class:`model.params.MACParams`
from the same generators, with the same lanes and the same dataflow:

1. ``pe``: one processing element (:mod:`hw.blocks.pe`), the lane an array replicates;
2. ``array``: :class:`hw.blocks.array.SystolicArray` alone, and ``datapath``: the array with
   the units around it that the accelerator uses (:class:`ArrayDatapath`);
3. ``accel``: :class:`hw.accel.accelerator.Accelerator`, the whole LeNet with memories and control.

:func:`ooc_wrapper` writes a Verilog top that feeds every input port of a block from a shift
register and captures every output port into a shift register, so that a place-and-route tool
times register-to-register paths of the block, never a path through a pin, with four pins whatever
the block's port count.
"""

from __future__ import annotations

import re

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from model.params import BMParams

from ..blocks.array import SystolicArray
from ..blocks.pe import pe_class
from ..blocks.requant import Requant, WindowSum, window_sum_bits
from ..blocks.util import check_count, check_params

__all__ = ["ArrayDatapath", "ooc_wrapper", "rtlil_ports", "verilog_ports"]


class ArrayDatapath(wiring.Component):
    """The systolic array with the units the accelerator puts around it (a cost model).

    The same units and widths as :class:`hw.accel.accelerator.Accelerator`, without its memories and
    control: BM: per input row a :class:`hw.blocks.requant.WindowSum` of the raw codes, the array,
    the exp unit (``cols`` lanes), the correction and requantization
    (:class:`hw.blocks.requant.Requant`, ``cols`` lanes) and the log unit on the write side
    (``cols`` lanes). MAC: the array and the requantization. The window sum of drain row ``r``
    follows its row through the exp pipeline. It is built for measuring cost, not verified cycle by
    cycle; the accelerator is.

    Parameters
    ----------
    params : BMParams or MACParams
    rows, cols : int
        Array size.
    max_fan_in : int
        Longest window (sets the window-sum and correction widths), LeNet's 5184 by default.

    Members
    -------
    i : In(stream.Signature({x, a, b, last}))
        ``x``: raw codes per row (BM window sums), ``a``/``b``/``last``: the array's input.
    o : Out(stream.Signature(...))
        BM: ``{lx, zero}`` per column (the log of the requantized code); MAC: the code.
    bias : In(ArrayLayout(signed(bias_bits), cols))
    c_shift, out_shift, relu : In
        As :class:`hw.blocks.requant.Requant`.
    """

    def __init__(self, params, *, rows: int, cols: int, max_fan_in: int = 5184):
        self.params = check_params(params, block="ArrayDatapath")
        self.rows = check_count("rows", rows)
        self.cols = check_count("cols", cols)
        self.max_fan_in = check_count("max_fan_in", max_fan_in)
        self.bm = isinstance(params, BMParams)
        p, pe = params, pe_class(params)
        layout = data.StructLayout({
            "x": data.ArrayLayout(unsigned(p.a_bits), rows),
            "a": data.ArrayLayout(pe.a_shape(p), rows),
            "b": data.ArrayLayout(pe.b_shape(p), cols),
            "last": 1,
        })
        if self.bm:
            from ..blocks.logexp import log_layout

            o_shape = data.ArrayLayout(log_layout(p), cols)
        else:
            o_shape = data.ArrayLayout(unsigned(p.a_bits), cols)
        ports = {
            "i": In(stream.Signature(layout)),
            "o": Out(stream.Signature(o_shape)),
            "bias": In(data.ArrayLayout(signed(p.bias_bits), cols)),
            "out_shift": In(range(64)),
            "relu": In(1),
        }
        if self.bm:
            ports["c_shift"] = In(range(p.max_c_shift + 1))
        super().__init__(ports)

    def elaborate(self, platform):
        p, R, C = self.params, self.rows, self.cols
        m = Module()
        m.submodules.array = arr = SystolicArray(p, rows=R, cols=C)
        m.submodules.requant = rq = Requant(p, lanes=C, max_fan_in=self.max_fan_in)
        take = Signal()
        m.d.comb += [
            arr.i.valid.eq(self.i.valid),
            self.i.ready.eq(arr.i.ready),
            take.eq(self.i.valid & arr.i.ready),
            arr.i.payload.a.eq(self.i.payload.a),
            arr.i.payload.b.eq(self.i.payload.b),
            arr.i.payload.last.eq(self.i.payload.last),
            rq.i.payload.bias.eq(self.bias),
            rq.out_shift.eq(self.out_shift),
            rq.relu.eq(self.relu),
        ]
        if not self.bm:
            m.d.comb += rq.i.payload.acc.eq(arr.o.payload.acc)
            _chain(m, arr.o, rq, self.o)
            _codes(m, p, rq.o.payload, self.o.payload)
            return m

        from ..blocks.logexp import ExpUnit, LogUnit

        s_bits = window_sum_bits(p, self.max_fan_in)
        m.submodules.exp = ex = ExpUnit(p, lanes=C)
        m.submodules.log = lg = LogUnit(p, lanes=C)
        # one window sum per input row; its result waits for the row's drain
        sums = []
        for r in range(R):
            ws = WindowSum(p, lanes=1, max_fan_in=self.max_fan_in)
            m.submodules[f"wsum{r}"] = ws
            held = Signal(s_bits, name=f"s_held{r}")
            m.d.comb += [
                ws.i.valid.eq(take),
                ws.i.payload.x[0].eq(self.i.payload.x[r]),
                ws.i.payload.last.eq(self.i.payload.last),
                ws.o.ready.eq(1),
            ]
            with m.If(ws.o.valid):
                m.d.sync += held.eq(ws.o.payload)
            sums.append(held)
        row = Signal(range(R))
        s_row = Signal(s_bits)
        with m.Switch(row):
            for r in range(R):
                with m.Case(r):
                    m.d.comb += s_row.eq(sums[r])
        a_take = Signal()
        m.d.comb += [
            ex.i.payload.eq(arr.o.payload.acc),
            ex.i.valid.eq(arr.o.valid),
            arr.o.ready.eq(ex.i.ready),
            a_take.eq(arr.o.valid & ex.i.ready),
        ]
        with m.If(a_take):
            m.d.sync += row.eq(0 if R == 1 else (row + 1) % R)
        # S moves through the exp unit's two stages in lock step (its enable is i.ready)
        s1, s2 = Signal(s_bits), Signal(s_bits)
        with m.If(ex.i.ready):
            m.d.sync += [s1.eq(s_row), s2.eq(s1)]
        m.d.comb += [
            rq.i.payload.e.eq(ex.o.payload),
            rq.i.payload.s.eq(s2),
            rq.i.valid.eq(ex.o.valid),
            ex.o.ready.eq(rq.i.ready),
            rq.c_shift.eq(self.c_shift),
        ]
        _chain(m, rq.o, lg, self.o)
        m.d.comb += self.o.payload.eq(lg.o.payload)
        _codes(m, p, rq.o.payload, lg.i.payload)
        return m


def _chain(m, src, unit, dst) -> None:
    """The handshake of ``src -> unit -> dst``: valid forward, ready back."""
    m.d.comb += [
        unit.i.valid.eq(src.valid),
        src.ready.eq(unit.i.ready),
        dst.valid.eq(unit.o.valid),
        unit.o.ready.eq(dst.ready),
    ]


def _codes(m, p, acc_lanes, dst) -> None:
    """Each lane's requantized value, trimmed to an activation code."""
    for c in range(len(dst)):
        m.d.comb += dst[c].eq(acc_lanes[c][: p.a_bits])


_PORT = re.compile(r"^\s*(input|output)\s+(?:signed\s+)?(?:\[(\d+):(\d+)\]\s+)?\\?(\S+)\s*;")


def _module_body(text: str, head: str, end: str, top: str, what: str) -> str:
    """The text of module ``top`` between its header (regex ``head``) and ``end``."""
    start = re.search(head, text, re.M)
    if start is None:
        raise ValueError(f"no module {top!r} in the {what}")
    return text[start.end() : text.index(end, start.end())]


def verilog_ports(text: str, top: str) -> list[tuple[str, str, int]]:
    """``(direction, name, width)`` of every port of module ``top`` in Yosys-written Verilog."""
    body = _module_body(text, rf"^module\s+\\?{re.escape(top)}\s*\(", "endmodule", top, "Verilog")
    ports = []
    for line in body.splitlines():
        mo = _PORT.match(line)
        if mo:
            hi, lo = mo[2], mo[3]
            width = abs(int(hi) - int(lo)) + 1 if hi is not None else 1
            ports.append((mo[1], mo[4], width))
    return ports


def rtlil_ports(text: str, top: str) -> list[tuple[str, str, int]]:
    """``(direction, name, width)`` of every port of module ``top`` in RTLIL, in port order."""
    body = _module_body(text, rf"^module \\{re.escape(top)}$", "\nend\n", top, "RTLIL")
    ports = []
    for mo in re.finditer(r"^\s*wire (?:width (\d+) )?(input|output) (\d+)\s+(?:signed\s+)?"
                          r"\\(\S+)$", body, re.M):
        ports.append((int(mo[3]), mo[2], mo[4], int(mo[1] or 1)))
    return [(d, n, w) for _, d, n, w in sorted(ports)]


def ooc_wrapper(text: str, top: str, wrapper: str, *, ports=None) -> str:
    """Verilog of module ``wrapper(clk, si, ld, so)`` around ``top`` (see the module docs).

    Every input bit of ``top`` but ``clk`` comes from a shift register that ``si`` feeds; every
    output bit goes into a register that loads when ``ld`` is high and shifts into ``so``
    otherwise. Nothing of ``top`` is unobservable, so nothing is optimised away, and every path
    into or out of ``top`` starts and ends at a flip-flop.
    """
    ports = verilog_ports(text, top) if ports is None else ports
    ins = [(n, w) for d, n, w in ports if d == "input" and n != "clk"]
    outs = [(n, w) for d, n, w in ports if d == "output"]
    ni = sum(w for _, w in ins)
    no = sum(w for _, w in outs)
    if not any(n == "clk" for d, n, _ in ports):
        raise ValueError(f"module {top!r} has no clk port")
    lines = [
        f"module {wrapper}(clk, si, ld, so);",
        "  input clk; input si; input ld; output so;",
        f"  reg [{max(ni, 2) - 1}:0] sin;",
        f"  reg [{max(no, 2) - 1}:0] sout;",
        f"  wire [{max(no, 2) - 1}:0] dout;",
        f"  always @(posedge clk) sin <= {{sin[{max(ni, 2) - 2}:0], si}};",
        f"  always @(posedge clk) sout <= ld ? dout : {{sout[{max(no, 2) - 2}:0], 1'b0}};",
        f"  assign so = sout[{max(no, 2) - 1}];",
    ]
    conns, k = [".clk(clk)"], 0
    for n, w in ins:
        conns.append(f".{n}(sin[{k + w - 1}:{k}])")
        k += w
    k = 0
    for n, w in outs:
        conns.append(f".{n}(dout[{k + w - 1}:{k}])")
        k += w
    if no < 2:
        lines.append(f"  assign dout[1:{no}] = 0;")
    lines.append(f"  {top} dut ({', '.join(conns)});")
    lines.append("endmodule")
    return "\n".join(lines) + "\n"
