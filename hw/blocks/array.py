"""Output-stationary processing-element array, generic over the PE kind (BM or MAC).

Dataflow
--------
The array computes tiles of ``out[r, c] = (+)_k a[r, k] (x) b[c, k]`` for ``rows`` input rows
(im2col windows, i.e. output pixels) and ``cols`` weight rows (output channels), with
``(x), (+)`` from the PE kind (:mod:`hw.blocks.pe`). It is *output stationary*: PE ``(r, c)`` keeps
the accumulator of output ``(r, c)`` for the whole tile while one step ``k`` per cycle streams past.
One input beat carries step ``k`` of every row and every column; a beat with ``last`` set ends
the tile. Tiles go back to back: the first beat after ``last`` restarts every accumulator, so
fill and drain of one tile overlap the next tile's compute and no cycle is lost between tiles of
``K >= rows`` steps.

Two ways to move the operands, chosen by ``dataflow``:

- ``"broadcast"`` (default): row ``r``'s operand goes to every PE of row ``r`` and column
  ``c``'s weight to every PE of column ``c`` in the same cycle, from one entry register each
  (fan-out ``cols`` and ``rows``). No operand registers inside the array: the cheapest form.
- ``"systolic"``: operands enter skewed and move one PE per cycle (right along the rows, down
  the columns), so that PE ``(r, c)`` sees step ``k`` at cycle ``k + r + c``; every wire is
  local, at the price of two operand registers per PE and ``rows + cols`` more latency.

When a tile ends, each PE copies its result into a drain register of its column; the drain
registers shift one row per cycle towards the exit, so one output beat carries one input row
across all ``cols`` columns, input row 0 first. A tile therefore needs ``rows`` cycles to drain:
a tile shorter than ``rows`` steps is held at its ``last`` beat until ``rows`` cycles have passed
since the previous ``last`` (``i.ready`` low).

Back-pressure stalls the whole array (one clock enable). The output goes through a two-entry
skid buffer, so the enable depends on registers only, never combinationally on ``o.ready``:
when the sink stops, the array runs one more cycle into the buffer, then everything holds and
``i.ready`` goes low. ``i.ready`` also depends on ``i.payload.last`` (the tile spacing above).
Input bubbles (``i.valid`` low) are harmless: the array feeds a neutral operand that leaves the
accumulators unchanged.

Cycle model
-----------
With a source that never stalls and a sink that is always ready, a layer of ``tiles`` tiles of
``K`` steps takes ``K + (tiles - 1) * max(K, rows) + latency + rows - 1`` cycles from the first
beat taken to the last output beat taken (inclusive), where ``latency`` (last beat of a tile in
to its first row out) is 4 for ``"broadcast"`` and ``rows + cols + 2`` for ``"systolic"``; see
:func:`predict_cycles`. In steady state a tile costs ``max(K, rows)`` cycles
(:func:`tile_interval`): layers streamed back to back pay the fill and drain once, not per tile.
"""

from __future__ import annotations

import math

from amaranth.hdl import Const, EnableInserter, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .pe import pe_class
from .util import check_count, check_params

__all__ = [
    "DATAFLOWS",
    "SystolicArray",
    "array_latency",
    "array_in_layout",
    "array_out_layout",
    "predict_cycles",
    "tile_interval",
]


def array_in_layout(params, rows: int, cols: int) -> data.StructLayout:
    """``{a: ArrayLayout(a_shape, rows), b: ArrayLayout(b_shape, cols), last: 1}``."""
    pe = pe_class(params)
    return data.StructLayout(
        {
            "a": data.ArrayLayout(pe.a_shape(params), rows),
            "b": data.ArrayLayout(pe.b_shape(params), cols),
            "last": 1,
        }
    )


def array_out_layout(params, cols: int) -> data.StructLayout:
    """``{acc: ArrayLayout(acc_shape, cols), last: 1}``: one input row's results."""
    pe = pe_class(params)
    return data.StructLayout({"acc": data.ArrayLayout(pe.acc_shape(params), cols), "last": 1})


def tile_interval(rows: int, fan_in: int) -> int:
    """Cycles between the starts of two back-to-back tiles of ``fan_in`` steps."""
    return max(fan_in, rows)


def predict_cycles(
    rows: int,
    cols: int,
    *,
    fan_in: int,
    pixels: int = 1,
    out_ch: int = 1,
    tiles: int | None = None,
    dataflow: str = "broadcast",
) -> int:
    """Cycles for one layer on a ``rows x cols`` array, first beat in to last result out.

    The layer is ``pixels`` im2col windows of ``fan_in`` codes and ``out_ch`` output channels,
    cut into ``ceil(pixels / rows) * ceil(out_ch / cols)`` tiles (or ``tiles`` when given), all
    streamed back to back by a source that never stalls into a sink that is always ready.
    """
    check_count("rows", rows)
    check_count("cols", cols)
    check_count("fan_in", fan_in)
    _check_dataflow(dataflow)
    if tiles is None:
        tiles = math.ceil(pixels / rows) * math.ceil(out_ch / cols)
    check_count("tiles", tiles)
    body = fan_in + (tiles - 1) * tile_interval(rows, fan_in)
    return body + array_latency(rows, cols, dataflow) + rows - 1


def array_latency(rows: int, cols: int, dataflow: str = "broadcast") -> int:
    """Cycles from a tile's ``last`` beat taken to its first output beat (sink ready)."""
    _check_dataflow(dataflow)
    return 4 if dataflow == "broadcast" else rows + cols + 2


DATAFLOWS = ("broadcast", "systolic")


def _check_dataflow(dataflow):
    if dataflow not in DATAFLOWS:
        raise ValueError(f"dataflow must be one of {DATAFLOWS}, not {dataflow!r}")


class SystolicArray(wiring.Component):
    """Output-stationary ``rows x cols`` array of BM (max-plus) or MAC processing elements.

    See the module documentation for the dataflow and the cycle model.

    Parameters
    ----------
    params : BMParams or MACParams
        Picks the PE kind: :class:`hw.blocks.pe.BMPE` (max-plus) or :class:`hw.blocks.pe.MACPE`.
    rows : int
        Input rows (im2col windows) per tile.
    cols : int
        Weight rows (output channels) per tile.
    dataflow : str
        ``"broadcast"`` (default) or ``"systolic"``: how operands reach the PEs.

    Members
    -------
    i : In(stream.Signature(array_in_layout(params, rows, cols)))
        One step ``k`` of a tile: ``a[r]`` is input row ``r``'s operand (BM: ``{lx, zero}`` from
        the log unit; MAC: the activation code), ``b[c]`` is column ``c``'s weight (BM: ``Lw``;
        MAC: ``w``). ``last`` marks the tile's final step. Unused rows or columns of a partial
        tile may carry any value; their results are simply ignored downstream.
    o : Out(stream.Signature(array_out_layout(params, cols)))
        ``rows`` beats per tile, input row 0 first: ``acc[c]`` is the tile's result for that
        row and column ``c`` (BM: ``{m, zero}``, with ``m = 0`` when ``zero``; MAC: the exact
        sum, wrapping modulo ``2**acc_bits``). ``last`` marks row ``rows - 1``.
    """

    def __init__(self, params, *, rows: int, cols: int, dataflow: str = "broadcast"):
        self.params = check_params(params, block="SystolicArray")
        self.rows = check_count("rows", rows)
        self.cols = check_count("cols", cols)
        _check_dataflow(dataflow)
        self.dataflow = dataflow
        self.pe_class = pe_class(params)
        super().__init__(
            {
                "i": In(stream.Signature(array_in_layout(params, rows, cols))),
                "o": Out(stream.Signature(array_out_layout(params, cols))),
            }
        )

    @property
    def latency(self) -> int:
        """Cycles from a tile's ``last`` beat taken to its first output beat (sink ready)."""
        return array_latency(self.rows, self.cols, self.dataflow)

    @property
    def min_tile_interval(self) -> int:
        """Fewest cycles between two ``last`` beats: one tile's drain."""
        return self.rows

    def predict_cycles(self, **kwargs) -> int:
        """:func:`predict_cycles` for this array."""
        return predict_cycles(self.rows, self.cols, dataflow=self.dataflow, **kwargs)

    def elaborate(self, platform):
        p, R = self.params, self.rows
        m = Module()
        core = Module()  # every register of the array but the output buffer, under one enable
        en = Signal()
        m.submodules.core = EnableInserter(en)(core)

        # -- input: tile spacing, first flag ---------------------------------------------------
        gap = Signal(range(R + 1), init=R)  # enabled cycles since the last `last` taken
        start = Signal(init=1)  # the next beat taken begins a tile
        take = Signal()
        m.d.comb += [
            self.i.ready.eq(en & (~self.i.payload.last | (gap >= R))),
            take.eq(self.i.valid & self.i.ready),
        ]
        with core.If(take & self.i.payload.last):
            core.d.sync += gap.eq(1)
        with core.Elif(gap < R):
            core.d.sync += gap.eq(gap + 1)
        with core.If(take):
            core.d.sync += start.eq(self.i.payload.last)

        out_layout = array_out_layout(p, self.cols)
        beat = Signal(out_layout)  # the array's result row, valid with `beat_valid`
        elaborate_core = (
            self._elaborate_broadcast if self.dataflow == "broadcast" else self._elaborate_systolic
        )
        beat_valid = elaborate_core(m, core, take, start, beat)

        # -- output skid buffer: the array's enable depends on registers only -----------------
        v0, v1 = Signal(), Signal()
        d0 = Signal(out_layout, reset_less=True)
        d1 = Signal(out_layout, reset_less=True)
        push = Signal()
        m.d.comb += [
            en.eq(~beat_valid | ~v1),
            push.eq(beat_valid & ~v1),
            self.o.valid.eq(v0),
            self.o.payload.eq(d0),
        ]
        with m.If(~v0 | self.o.ready):
            with m.If(v1):
                m.d.sync += [d0.eq(d1), v0.eq(1), v1.eq(0)]
            with m.Elif(push):
                m.d.sync += [d0.eq(beat), v0.eq(1)]
            with m.Else():
                m.d.sync += v0.eq(0)
        with m.Elif(push):
            m.d.sync += [d1.eq(beat), v1.eq(1)]
        return m

    def _row_operand(self, m, take, r):
        """Input row ``r``'s operand this cycle: the payload, or a neutral bubble."""
        PE, p = self.pe_class, self.params
        a_shape = PE.a_shape(p)
        if isinstance(a_shape, data.Layout):
            neutral_a = a_shape.const(PE.neutral_a)
        else:
            neutral_a = Const(PE.neutral_a, a_shape)
        a = Signal(a_shape, name=f"row_in{r}")
        m.d.comb += a.eq(Mux(take, self.i.payload.a[r], neutral_a))
        return a

    def _set_beat(self, m, beat, c, x):
        """Column ``c`` of the output beat from result ``x`` (BM: m = 0 when flagged)."""
        if isinstance(self.pe_class.acc_shape(self.params), data.Layout):
            m.d.comb += [
                beat.acc[c].m.eq(x.m & ~x.zero.replicate(len(x.m))),
                beat.acc[c].zero.eq(x.zero),
            ]
        else:
            m.d.comb += beat.acc[c].eq(x)

    def _elaborate_broadcast(self, m, core, take, start, beat):
        p, R, C, PE = self.params, self.rows, self.cols, self.pe_class
        acc_shape = PE.acc_shape(p)
        # entry registers: row r's operand and control (one copy per row), column c's weight
        a_in, first_in, last_done = [], [], []
        for r in range(R):
            a = Signal(PE.a_shape(p), name=f"a{r}", reset_less=True)
            first, last, done = (Signal(name=f"{n}{r}") for n in ("first", "last", "done"))
            core.d.sync += [
                a.eq(self._row_operand(m, take, r)),
                first.eq(take & start),
                last.eq(take & self.i.payload.last),
                done.eq(last),  # the tile's results are in the accumulators
            ]
            a_in.append(a)
            first_in.append(first)
            last_done.append(done)
        b_in = []
        for c in range(C):
            b = Signal(PE.b_shape(p), name=f"b{c}", reset_less=True)
            core.d.sync += b.eq(self.i.payload.b[c])
            b_in.append(b)

        # PE grid and drain registers: load every result at once, then shift up one row per
        # cycle; row 0 leaves first
        drain = [
            [Signal(acc_shape, name=f"drain{r}_{c}", reset_less=True) for c in range(C)]
            for r in range(R)
        ]
        for r in range(R):
            for c in range(C):
                pe = PE(p)
                core.submodules[f"pe{r}_{c}"] = pe
                core.d.comb += [pe.a.eq(a_in[r]), pe.b.eq(b_in[c]), pe.first.eq(first_in[r])]
                with core.If(last_done[r]):
                    core.d.sync += drain[r][c].eq(pe.acc)
                with core.Else():
                    core.d.sync += drain[r][c].eq(drain[r + 1][c] if r + 1 < R else 0)

        active = Signal()
        count = Signal(range(R))
        with core.If(last_done[0]):
            core.d.sync += [active.eq(1), count.eq(0)]
        with core.Elif(active):
            with core.If(count == R - 1):
                core.d.sync += active.eq(0)
            with core.Else():
                core.d.sync += count.eq(count + 1)
        for c in range(C):
            self._set_beat(m, beat, c, drain[0][c])
        m.d.comb += beat.last.eq(count == R - 1)
        return active

    def _elaborate_systolic(self, m, core, take, start, beat):
        p, R, C, PE = self.params, self.rows, self.cols, self.pe_class
        acc_shape = PE.acc_shape(p)
        ctl_layout = data.StructLayout({"first": 1, "last": 1})

        def delay(x, n, name, *, reset_less=True):
            """``x`` through ``n`` enabled registers (data registers have no reset)."""
            for d in range(n):
                y = Signal(x.shape(), name=f"{name}_{d}", reset_less=reset_less)
                core.d.sync += y.eq(x)
                x = y
            return x

        # -- row entry: physical row r takes input row R-1-r through r+1 registers -----------
        # (so that the drain, which leaves at the bottom, returns input row 0 first)
        row_a, row_ctl = [], []
        for r in range(R):
            a = self._row_operand(m, take, R - 1 - r)
            ctl = Signal(ctl_layout, name=f"row_ctl_in{r}")
            m.d.comb += [
                ctl.first.eq(take & start),
                ctl.last.eq(take & self.i.payload.last),
            ]
            row_a.append(delay(a, r + 1, f"row_skew{r}"))
            row_ctl.append(delay(ctl, r + 1, f"row_ctl_skew{r}", reset_less=False))
        col_b = [delay(self.i.payload.b[c], c + 1, f"col_skew{c}") for c in range(C)]

        # -- drain control: column c's (active, count) is column 0's delayed by c -------------
        active = [Signal(name=f"drain_active{c}") for c in range(C)]
        count = [Signal(range(R), name=f"drain_count{c}") for c in range(C)]

        # -- PE grid ---------------------------------------------------------------------------
        chain = [
            [Signal(acc_shape, name=f"drain{r}_{c}", reset_less=True) for c in range(C)]
            for r in range(R)
        ]
        a_reg = [[None] * C for _ in range(R)]
        ctl_reg = [[None] * C for _ in range(R)]
        b_reg = [[None] * C for _ in range(R)]
        for r in range(R):
            for c in range(C):
                pe = PE(p)
                core.submodules[f"pe{r}_{c}"] = pe
                a_src = row_a[r] if c == 0 else a_reg[r][c - 1]
                ctl_src = row_ctl[r] if c == 0 else ctl_reg[r][c - 1]
                b_src = col_b[c] if r == 0 else b_reg[r - 1][c]
                core.d.comb += [pe.a.eq(a_src), pe.b.eq(b_src), pe.first.eq(ctl_src.first)]
                a_reg[r][c] = delay(a_src, 1, f"a{r}_{c}")
                ctl_reg[r][c] = delay(ctl_src, 1, f"ctl{r}_{c}", reset_less=False)
                b_reg[r][c] = delay(b_src, 1, f"b{r}_{c}")
                # the tile's result is in acc the cycle after `last` passed this PE
                with core.If(ctl_reg[r][c].last):
                    core.d.sync += chain[r][c].eq(pe.acc)
                with core.Elif(active[c] & (count[c] <= r)):
                    core.d.sync += chain[r][c].eq(chain[r - 1][c] if r > 0 else 0)

        # the last tile row's result lands in the bottom drain register of column 0 ...
        with core.If(ctl_reg[R - 1][0].last):
            core.d.sync += [active[0].eq(1), count[0].eq(0)]
        with core.Elif(active[0]):
            with core.If(count[0] == R - 1):
                core.d.sync += active[0].eq(0)
            with core.Else():
                core.d.sync += count[0].eq(count[0] + 1)
        # ... then each column drains one cycle after its left neighbour
        for c in range(1, C):
            core.d.sync += [active[c].eq(active[c - 1]), count[c].eq(count[c - 1])]

        # -- de-skew the columns into one output beat ------------------------------------------
        for c in range(C):
            x = delay(chain[R - 1][c], C - 1 - c, f"out_skew{c}")
            self._set_beat(m, beat, c, x)
        m.d.comb += beat.last.eq(count[C - 1] == R - 1)
        return active[C - 1]
