"""Whole-network accelerator: a stack of 3x3 (or any square-kernel) valid convolutions and a
final linear layer, run layer by layer through one :class:`hw.array.SystolicArray`.

Generic over the arithmetic: a :class:`model.params.BMParams` export runs the integer 1.5-BM
network (log codes in memory, max-plus array, exp unit, window-sum correction), a
:class:`model.params.MACParams` export runs the int8 baseline on the same dataflow (multiply-add
array, no log/exp). Equal to :func:`model.reference.ref_network`, logit for logit.

Dataflow
--------
* **Feature maps** live in two ping-pong buffers of ``rows`` block-RAM banks each (SPRAM on
  an iCE40 UltraPlus, see :mod:`hw.spram`). Channel ``c``
  of an ``H x W`` map occupies the flat indices ``c * HWp + y * W + x``, where the plane size is
  padded to ``HWp = H*W`` rounded up to ``1 (mod rows)``; flat index ``F`` lives in bank
  ``F mod rows`` at address ``F div rows`` (``rows`` is a power of two). A BM word holds the code
  and its log (``{x, lx}``): the log unit sits on the *write* side, once per activation; the
  zero flag is not stored but recomputed from the code on the read side (``x + dx == 0``), so
  that a word is 16 bits for 8-bit codes (one SPRAM or a 16-bit block-RAM word).
* **Tiles.** A conv layer is computed on *virtual pixels* ``p = y * W_in + x`` (raster order over
  the input width, so the two columns past ``W_out`` are computed and discarded). A tile is
  ``rows`` consecutive virtual pixels times ``cols`` output channels. At step
  ``k = (c, ky, kx)`` lane ``j`` needs flat index ``c*HWp + ky*W_in + kx + p0 + j``: ``rows``
  consecutive indices, one per bank, read in one cycle and rotated into place. Column ``c``
  reads its weight from its own weight memory. A linear layer is a convolution whose kernel
  covers its whole input map.
* **After the array** each output row (one pixel, ``cols`` channels) goes through the exp unit,
  the correction and requantization unit (with the window sum ``S`` that the feeder accumulated
  per lane), the log unit, and is written back: the ``cols`` channels of one pixel fall in
  ``cols`` distinct banks because ``HWp = 1 (mod rows)`` and ``cols <= rows``.
* The image is loaded through the same write path. Layers run one after the other; a layer
  starts when the previous one's last row is written. The last layer streams its logits out.

Pipelined images (``NetPlan.overlap``, the ULX3S and Arty builds)
------------------------------------------------------------------
On a 16 x 16 array the paper LeNet's classifier (one output pixel, 5,184 steps) keeps one array
row of sixteen busy for a quarter of the image, and loading 784 pixels one per cycle costs
another 784 cycles. With ``overlap``:

* the classifier runs on :class:`hw.fc.FCEngine`, a ``1 x n_out`` array of the same processing
  elements with its own exp and requantization units; the layer before it (the *feeder*)
  writes its rows into the engine's buffer instead of a feature-map buffer, and the engine
  runs beside the next image's first layers. The feeder waits while the engine is busy;
* the image streams into a staging memory (``cols`` pixels a word) while the previous image
  computes, and is copied into the feature-map banks ``cols`` pixels per cycle through the
  log unit and the write stage.

Each image's cycles are then the copy and the array layers only (:func:`predict_interval`);
its latency is longer (:func:`predict_image_cycles`).

Classifier heads (``LayerSpec.neuron`` of the last layer)
---------------------------------------------------------
``bm15`` runs as above. The signed heads ``lns`` and ``bm2`` (:mod:`model.reference`, "The
classifier heads"; the export's ``layer<i>.sign``) always run on :class:`hw.fc.FCEngine`,
which builds them; without ``overlap`` the feeder still writes into the engine's buffer, the
engine runs after it, and the next image is loaded when its logits have left (the cycle model
covers both forms). :func:`plan_network` refuses, with a ``ValueError`` naming the layer, a
neuron the hardware does not build, a signed neuron before the last layer, a signed head on
MAC params, and a signed head with no layer before it.

Members
-------
i : In(stream.Signature(unsigned(8)))
    Pixels of one image, row-major (``n_pixels``); the code is ``pixel >> pixel_shift``.
o : Out(stream.Signature(signed(32)))
    ``n_logits`` logits per image, in class order.
busy : Out(1)
    High from the first pixel until the last logit is taken (with ``overlap``: while any image
    is staged, computing or in the FC engine).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from model.params import BMParams

from ._util import RegisterSlice, rom
from .array import SystolicArray
from .fc import FCEngine
from .logexp import ExpUnit, LogUnit
from .plan import (  # noqa: F401 - the plan's names re-exported (their old home)
    LayerPlan,
    NetPlan,
    plan_network,
    predict_image_cycles,
    predict_interval,
)
from .requant import Requant, window_sum_bits

__all__ = ["LayerPlan", "NetPlan", "plan_network", "predict_image_cycles", "predict_interval",
           "Accelerator", "use_spram"]


UP5K_SPRAMS = 4
TFIFO_DEPTH = 8


class _Wires(SimpleNamespace):
    """What the steps of :meth:`Accelerator.elaborate` hand on to the later ones: the plan's
    figures, the sub-components and the shared signals, by the names the steps use."""


def use_spram(platform, width: int, depths, rows: int) -> bool:
    """On an iCE40 UltraPlus the feature-map banks go to SPRAM when all ``2 * rows`` fit (the
    chip has four 16384 x 16 SPRAMs); block RAM then holds the weights. Elsewhere, and in
    simulation, the banks are ``amaranth.lib.memory`` memories (block RAM)."""
    device = str(getattr(platform, "device", "") or "")
    if not device.startswith("iCE40UP"):
        return False
    from .spram import spram_fits

    return 2 * rows <= UP5K_SPRAMS and all(spram_fits(width, d) for d in depths)


class Accelerator(wiring.Component):
    """The whole integer network on one systolic array; see the module documentation."""

    def __init__(self, plan: NetPlan, tensors):
        self.plan = plan
        self.params = plan.params
        self.bm = isinstance(plan.params, BMParams)
        if len(tensors) != len(plan.layers):
            raise ValueError(f"{len(plan.layers)} layers but {len(tensors)} tensor sets")
        self.tensors = tensors
        super().__init__({
            "i": In(stream.Signature(unsigned(8))),
            "o": Out(stream.Signature(signed(32))),
            "busy": Out(1),
        })

    @classmethod
    def from_export(cls, export, *, rows: int = 16, cols: int = 16, overlap: bool = False):
        plan = plan_network(export.params, export.layers, export.input_shape,
                            export.pixel_shift, rows=rows, cols=cols, overlap=overlap)
        return cls(plan, export.tensors)

    @property
    def n_pixels(self) -> int:
        return self.plan.n_pixels

    @property
    def n_logits(self) -> int:
        return self.plan.n_logits

    @property
    def cycles_per_image(self) -> int:
        """Steady-state cycles per image (:func:`predict_interval`): the throughput figure."""
        return predict_interval(self.plan)

    @property
    def latency_cycles(self) -> int:
        """One image alone, first pixel to last logit (:func:`predict_image_cycles`)."""
        return predict_image_cycles(self.plan)

    # -- memory images -------------------------------------------------------------------------
    def _weight_init(self):
        """Per column: the weight stream of every group, layer by layer."""
        plan, C = self.plan, self.plan.cols
        cols = [[] for _ in range(C)]
        for lp, t in zip(plan.layers, self.tensors, strict=True):
            if not lp.on_array:
                continue
            w = [list(map(int, row)) for row in np.asarray(t["w"]).reshape(lp.cout, lp.fan_in)]
            for g in range(plan.n_groups(lp)):
                for c in range(C):
                    o = g * C + c
                    cols[c].extend(w[o] if o < lp.cout else [0] * lp.fan_in)
        return cols

    def elaborate(self, platform):
        plan, p, R, C = self.plan, self.params, self.plan.rows, self.plan.cols
        bm = self.bm
        lgR = (R - 1).bit_length()
        m = Module()
        layers, groups = plan.array_layers, plan.groups
        n_layers = len(layers)
        overlap = plan.overlap
        fc_head = plan.fc_head  # the classifier on the FC engine (with ``overlap``, or signed)

        w = _Wires(platform=platform)
        w.C, w.R, w.bm, w.fc_head, w.groups, w.layers = C, R, bm, fc_head, groups, layers
        w.lgR, w.n_layers, w.overlap, w.p, w.plan = lgR, n_layers, overlap, p, plan
        for step in (self._units, self._tables, self._memories, self._control, self._feeder,
                     self._feeder_counters, self._output_rows, self._logit_out, self._image_load,
                     self._to_write_path, self._write_stage, self._sequencer):
            step(m, w)
        return m

    def _units(self, m, w):
        """The array, the requantizer, the exp and log units (BM) and the slices between them."""
        C, R, bm, layers, p = w.C, w.R, w.bm, w.layers, w.p
        m.submodules.array = arr = SystolicArray(p, rows=R, cols=C)
        max_fan_in = max(lp.fan_in for lp in layers)
        m.submodules.requant = rq = Requant(p, lanes=C, max_fan_in=max_fan_in)
        # register slices after the exp unit and after requantization: no ready path runs from
        # the write stage back into the array (see hw.plan.POST_BM)
        m.submodules.rq_slice = rq_slice = RegisterSlice(rq.o.payload.shape())
        wiring.connect(m, rq.o, rq_slice.i)
        rq_o = rq_slice.o
        s_bits = window_sum_bits(p, max_fan_in)
        ex = ex_slice = lg = None  # BM only
        if bm:
            m.submodules.exp = ex = ExpUnit(p, lanes=C)
            m.submodules.ex_slice = ex_slice = RegisterSlice(ex.o.payload.shape())
            wiring.connect(m, ex.o, ex_slice.i)
            m.submodules.log = lg = LogUnit(p, lanes=C)
            # the zero flag is not stored: it is ``x + dx == 0``, recomputed on the read side
            word = data.StructLayout({"x": unsigned(p.a_bits), "lx": unsigned(p.lx_bits)})
        else:
            word = data.StructLayout({"x": unsigned(p.a_bits)})
        w.arr, w.ex, w.ex_slice, w.lg, w.rq, w.rq_o = arr, ex, ex_slice, lg, rq, rq_o
        w.s_bits, w.word = s_bits, word

    def _tables(self, m, w):
        """The layer table (one synchronous ROM per field, ``w.L``) and the per-group table."""
        C, R, fc_head, groups, layers, lgR = w.C, w.R, w.fc_head, w.groups, w.layers, w.lgR
        n_layers, overlap, plan = w.n_layers, w.overlap, w.plan
        n_groups = len(groups)
        gi_shape = range(n_groups)
        layer_shape = range(max(n_layers, 2))
        addr_bits = max(d for d in plan.buf_depth).bit_length() + lgR

        def field(index, values, shape, name):
            return rom(m, index, [int(v) for v in values], shape, name=name)

        layer = Signal(layer_shape)  # the layer running now
        L = {}
        for name, fn, shape in [
            ("cin_m1", lambda lp: lp.cin - 1, 16),
            ("k_m1", lambda lp: lp.k - 1, 8),
            ("ky_inc", lambda lp: lp.w_in - (lp.k - 1), 16),
            ("c_inc", lambda lp: lp.hwp_in - (lp.k - 1) * lp.w_in - (lp.k - 1), 24),
            ("tiles_m1", lambda lp: plan.tiles(lp) - 1, 16),
            ("ngroups_m1", lambda lp: plan.n_groups(lp) - 1, 8),
            ("fan_in", lambda lp: lp.fan_in, 16),
            ("fan_m1", lambda lp: lp.fan_in - 1, 16),
            ("p_virt", lambda lp: lp.p_virt, 16),
            ("w_in", lambda lp: lp.w_in, 16),
            ("w_out", lambda lp: lp.w_out, 16),
            ("rows_total", lambda lp: plan.n_groups(lp) * plan.tiles(lp) * R, 24),
            ("c_shift", lambda lp: lp.c_shift, 8),
            ("out_shift", lambda lp: lp.out_shift, 8),
            ("relu", lambda lp: lp.relu, 1),
            ("last", lambda lp: lp.last, 1),
            ("src", lambda lp: lp.src, 1),
            ("group0", lambda lp: lp.group0, 8),
            ("wbase", lambda lp: lp.wbase, 24),
        ] + ([
            ("final", lambda lp: lp.feeds_fc, 1),
            # the feeder is the last array layer: the one before it precedes it
            ("next_fc", lambda lp: len(layers) > 1 and lp is layers[-2], 1),
        ] if fc_head else []):
            # the layer table is a synchronous-read ROM (registered outputs, for timing): a
            # layer starts one cycle after ``layer`` changes (state PRE), when they are valid.
            # A clocked read also keeps simulators that never evaluate a combinational block
            # whose inputs are constant (Icarus at time 0) from seeing X.
            tab = Memory(shape=shape, depth=len(layers), init=[int(fn(lp)) for lp in layers])
            m.submodules[f"ltab_{name}"] = tab
            rp = tab.read_port(domain="sync")
            m.d.comb += rp.addr.eq(layer)
            L[name] = rp.data

        # per group: o0, valid columns, output buffer, channel bases, biases
        def group_rows(g):
            li, o0, ncol = groups[g]
            if li < 0:  # the image load: one pixel per row, or ``C`` (``overlap``)
                return 0, ncol, 0, list(range(C)) if overlap else [0] * C, [0] * C
            lp, t = layers[li], self.tensors[li]
            bias = np.asarray(t["bias"]).reshape(-1)
            bases = [(o0 + c) * lp.hwp_out for c in range(C)]
            bvals = [int(bias[o0 + c]) if c < ncol else 0 for c in range(C)]
            return o0, ncol, lp.dst, bases, bvals

        G = [group_rows(g) for g in range(n_groups)]

        def group_field(index, sel, shape, name):
            return rom(m, index, [sel(G[g]) for g in range(n_groups)], shape, name=name)
        w.L, w.addr_bits, w.gi_shape, w.group_field = L, addr_bits, gi_shape, group_field
        w.layer, w.n_groups = layer, n_groups

    def _memories(self, m, w):
        """The feature-map banks (two ping-pong buffers of ``rows`` banks), the weight memories."""
        C, R, bm, p, plan, word, platform = w.C, w.R, w.bm, w.p, w.plan, w.word, w.platform
        banks = [[], []]
        spram = use_spram(platform, word.size, plan.buf_depth, R)
        for b in range(2):
            for j in range(R):
                if spram:
                    from .spram import SPRAMBank

                    mem = SPRAMBank(word.size, plan.buf_depth[b])
                    m.submodules[f"buf{b}_{j}"] = mem
                    banks[b].append((mem.r, mem.w))
                    continue
                mem = Memory(shape=word, depth=plan.buf_depth[b], init=[])
                m.submodules[f"buf{b}_{j}"] = mem
                banks[b].append((mem.read_port(), mem.write_port()))
        w_init = self._weight_init()
        b_shape = signed(p.w_log_bits) if bm else signed(p.w_bits)
        wmems = []  # one read port per memory of ``w_pack`` columns
        wcol = []  # per column: its memory's read port and its place in the word
        pk = plan.w_pack
        for k in range(math.ceil(C / pk)):
            cs = list(range(k * pk, min(C, (k + 1) * pk)))
            if pk == 1:
                mem = Memory(shape=b_shape, depth=plan.w_depth, init=w_init[k])
            else:
                mem = Memory(shape=data.ArrayLayout(b_shape, len(cs)), depth=plan.w_depth,
                             init=[[w_init[c][a] for c in cs] for a in range(len(w_init[k * pk]))])
            m.submodules[f"wmem{k}"] = mem
            wmems.append(mem.read_port())
            wcol += [(wmems[-1], j if pk > 1 else None) for j in range(len(cs))]
        w.banks, w.wcol, w.wmems = banks, wcol, wmems

    def _control(self, m, w):
        """The phase state machine's registers, the feeder counters and stage B's registers."""
        fc_head, gi_shape, lgR, plan = w.fc_head, w.gi_shape, w.lgR, w.plan
        state = Signal(range(5))
        LOAD, RUN, WAIT, OUT, PRE = 0, 1, 2, 3, 4
        npix = Signal(range(plan.n_pixels + 1))
        staged = Signal()  # ``overlap``: a whole image waits in the staging memory
        loading = Signal()  # ``overlap``: the copied image's rows are being written
        busy_fc = None  # with the FC engine only
        if fc_head:
            busy_fc = Signal()
            m.d.comb += self.busy.eq((state != LOAD) | (npix != 0) | staged | busy_fc)
            # (``busy_fc`` includes the start pulse: no low cycle before the engine's ``busy``)
        else:
            m.d.comb += self.busy.eq((state != LOAD) | (npix != 0))
        retired = Signal(24)  # rows through the write stage since the phase began
        retire = Signal()
        with m.If(retire):
            m.d.sync += retired.eq(retired + 1)

        # feeder counters
        kx = Signal(8)
        ky = Signal(8)
        ci = Signal(16)
        kk = Signal(16)
        p0 = Signal(24)
        s_idx = Signal(24)  # off + p0: the flat index of lane 0 (kept as a register, no adder)
        tile = Signal(16)
        grp = Signal(8)  # group within the layer
        gi = Signal(gi_shape)  # global group index
        wptr = Signal(24)
        gbase = Signal(24)
        issuing = Signal()
        m.d.comb += issuing.eq(state == RUN)

        # stage B (memory outputs) registers
        bv = Signal()
        b_last = Signal()
        b_first = Signal()
        b_slo = Signal(max(1, lgR))
        b_gi = Signal(gi_shape)
        b_firsttile = Signal()
        b_src = Signal()
        w.LOAD, w.OUT, w.PRE, w.RUN, w.WAIT, w.b_first = LOAD, OUT, PRE, RUN, WAIT, b_first
        w.b_firsttile, w.b_gi, w.b_last, w.b_slo, w.b_src = b_firsttile, b_gi, b_last, b_slo, b_src
        w.busy_fc, w.bv, w.ci, w.gbase, w.gi, w.grp = busy_fc, bv, ci, gbase, gi, grp
        w.issuing, w.kk, w.kx, w.ky, w.loading, w.npix = issuing, kk, kx, ky, loading, npix
        w.p0, w.retire, w.retired, w.s_idx, w.staged = p0, retire, retired, s_idx, staged
        w.state, w.tile, w.wptr = state, tile, wptr

    def _feeder(self, m, w):
        """The tile FIFO, the bank read addresses, the rotation into lanes and the window sums."""
        R, arr, b_first, b_firsttile, b_gi = w.R, w.arr, w.b_first, w.b_firsttile, w.b_gi
        b_last, b_slo, b_src, banks, bm, bv = w.b_last, w.b_slo, w.b_src, w.banks, w.bm, w.bv
        gi_shape, lgR, p, plan, s_bits, s_idx = w.gi_shape, w.lgR, w.p, w.plan, w.s_bits, w.s_idx
        wcol, wmems, word, wptr = w.wcol, w.wmems, w.word, w.wptr
        # tile FIFO: (gi, first tile of its group, S per lane)
        tile_layout = data.StructLayout({"gi": gi_shape, "first": 1,
                                         "s": data.ArrayLayout(unsigned(s_bits), R)})
        m.submodules.tfifo = tfifo = SyncFIFOBuffered(width=tile_layout.size, depth=TFIFO_DEPTH)
        t_in = data.View(tile_layout, tfifo.w_data)
        t_out = data.View(tile_layout, tfifo.r_data)

        # stage R: the bank words (of the buffer read) and the weights of stage B registered,
        # before the rotation and the array's entry (timing: an ECP5 block RAM's output comes
        # about 6 ns after the clock). Stages B and R advance together (``adv``).
        rv = Signal()
        r_last, r_first, r_firsttile = Signal(), Signal(), Signal()
        r_slo = Signal(max(1, lgR))
        r_gi = Signal(gi_shape)
        r_word = [Signal(word, name=f"r_word{b}") for b in range(R)]
        r_w = [Signal(arr.i.payload.b[c].shape(), name=f"r_w{c}") for c in range(len(wcol))]
        transfer = Signal()
        t_pend = Signal()  # a tile's entry goes into the FIFO this cycle (see window sums)
        m.d.comb += [
            # room for this tile's entry, after the one still being written
            arr.i.valid.eq(rv & (~r_last | Mux(t_pend, tfifo.w_level < TFIFO_DEPTH - 1,
                                               tfifo.w_rdy))),
            transfer.eq(arr.i.valid & arr.i.ready),
        ]
        adv = Signal()
        m.d.comb += adv.eq(~rv | transfer)
        with m.If(adv):
            m.d.sync += [rv.eq(bv), r_last.eq(b_last), r_first.eq(b_first),
                         r_firsttile.eq(b_firsttile), r_slo.eq(b_slo), r_gi.eq(b_gi)]
            m.d.sync += [r_word[b].eq(Mux(b_src, banks[1][b][0].data, banks[0][b][0].data))
                         for b in range(R)]
            m.d.sync += [r_w[c].eq(rp.data if j is None else rp.data[j])
                         for c, (rp, j) in enumerate(wcol)]

        # read addresses: lane j <- bank (s + j) mod R, bank b reads F_b = s + ((b - s) mod R)
        s_lo = s_idx[:lgR] if lgR else Const(0, 1)
        s_hi = s_idx[lgR:]
        for b in range(2):
            for j, (rp, _) in enumerate(banks[b]):
                depth_bits = (plan.buf_depth[b] - 1).bit_length()
                m.d.comb += [
                    rp.addr.eq((s_hi + (j < s_lo))[:depth_bits]),
                    rp.en.eq(adv),
                ]
        for rp in wmems:
            m.d.comb += [rp.addr.eq(wptr), rp.en.eq(adv)]

        # rotate bank outputs into lanes
        lane_x = []
        for j in range(R):
            sel = Signal(range(R), name=f"rot{j}")
            m.d.comb += sel.eq((r_slo + j) & (R - 1)) if lgR else sel.eq(0)
            wv = Signal(word, name=f"lane{j}")
            with m.Switch(sel):
                for b in range(R):
                    with m.Case(b):
                        m.d.comb += wv.eq(r_word[b])
            lane_x.append(wv)
            if bm:
                m.d.comb += [arr.i.payload.a[j].lx.eq(wv.lx),
                             arr.i.payload.a[j].zero.eq((wv.x == 0) if p.dx == 0 else 0)]
            else:
                m.d.comb += arr.i.payload.a[j].eq(wv.x)
        m.d.comb += [arr.i.payload.b[c].eq(r_w[c]) for c in range(len(wcol))]
        m.d.comb += arr.i.payload.last.eq(r_last)

        # window sums per lane, one register stage behind the array input (timing: the block
        # RAM output, the rotation and the adder do not fit one cycle); the tile's entry goes
        # into the FIFO a cycle after its last beat
        c_valid = Signal()
        c_last = Signal()
        c_first = Signal()
        c_gi = Signal(gi_shape)
        c_firsttile = Signal()
        c_x = [Signal(p.a_bits, name=f"c_x{j}") for j in range(R)]
        m.d.sync += c_valid.eq(transfer)
        with m.If(transfer):
            m.d.sync += [c_last.eq(r_last), c_first.eq(r_first), c_gi.eq(r_gi),
                         c_firsttile.eq(r_firsttile)]
            m.d.sync += [c_x[j].eq(lane_x[j].x) for j in range(R)]
        s_acc = [Signal(s_bits, name=f"s_acc{j}") for j in range(R)]
        for j in range(R):
            s_now = Signal(s_bits, name=f"s_now{j}")
            m.d.comb += s_now.eq(Mux(c_first, 0, s_acc[j]) + c_x[j])
            with m.If(c_valid):
                m.d.sync += s_acc[j].eq(s_now)
            m.d.comb += t_in.s[j].eq(s_now)
        m.d.comb += [
            t_in.gi.eq(c_gi),
            t_in.first.eq(c_firsttile),
            t_pend.eq(c_valid & c_last),
            tfifo.w_en.eq(t_pend),
        ]
        w.adv, w.s_lo, w.t_out, w.tfifo = adv, s_lo, t_out, tfifo

    def _feeder_counters(self, m, w):
        """The feeder's counters: one step a beat, then the ends of tiles, groups and layers."""
        L, R, WAIT, adv, b_first, b_firsttile = w.L, w.R, w.WAIT, w.adv, w.b_first, w.b_firsttile
        b_gi, b_last, b_slo, b_src, bv, ci = w.b_gi, w.b_last, w.b_slo, w.b_src, w.bv, w.ci
        gbase, gi, grp, issuing, kk, kx, ky = w.gbase, w.gi, w.grp, w.issuing, w.kk, w.kx, w.ky
        p0, s_idx, s_lo, state, tile, wptr = w.p0, w.s_idx, w.s_lo, w.state, w.tile, w.wptr
        # counters advance on every beat issued into stage B
        fan_m1 = L["fan_m1"]
        last_step = Signal()
        m.d.comb += last_step.eq(kk == fan_m1)
        last_tile = Signal()
        m.d.comb += last_tile.eq(tile == L["tiles_m1"])
        last_group = Signal()
        m.d.comb += last_group.eq(grp == L["ngroups_m1"])
        with m.If(adv):
            m.d.sync += bv.eq(issuing)
            with m.If(issuing):
                m.d.sync += [
                    b_last.eq(last_step),
                    b_first.eq(kk == 0),
                    b_slo.eq(s_lo),
                    b_gi.eq(gi),
                    b_firsttile.eq(tile == 0),
                    b_src.eq(L["src"]),
                    wptr.eq(wptr + 1),
                    kk.eq(kk + 1),
                ]
                with m.If(kx != L["k_m1"]):
                    m.d.sync += [kx.eq(kx + 1), s_idx.eq(s_idx + 1)]
                with m.Elif(ky != L["k_m1"]):
                    m.d.sync += [kx.eq(0), ky.eq(ky + 1), s_idx.eq(s_idx + L["ky_inc"])]
                with m.Else():
                    m.d.sync += [kx.eq(0), ky.eq(0), ci.eq(ci + 1), s_idx.eq(s_idx + L["c_inc"])]
                with m.If(last_step):
                    m.d.sync += [kx.eq(0), ky.eq(0), ci.eq(0), kk.eq(0), wptr.eq(gbase)]
                    with m.If(~last_tile):
                        m.d.sync += [tile.eq(tile + 1), p0.eq(p0 + R), s_idx.eq(p0 + R)]
                    with m.Else():
                        m.d.sync += [tile.eq(0), p0.eq(0), s_idx.eq(0),
                                     gbase.eq(gbase + L["fan_in"]),
                                     wptr.eq(gbase + L["fan_in"])]
                        with m.If(~last_group):
                            m.d.sync += [grp.eq(grp + 1), gi.eq(gi + 1)]
                        with m.Else():
                            m.d.sync += state.eq(WAIT)

    def _output_rows(self, m, w):
        """Rows from the array: pixel bookkeeping, the exp unit (BM), the requantizer's inputs."""
        C, L, R, arr, bm, ex, ex_slice = w.C, w.L, w.R, w.arr, w.bm, w.ex, w.ex_slice
        gi_shape, group_field, p, rq, s_bits = w.gi_shape, w.group_field, w.p, w.rq, w.s_bits
        t_out, tfifo = w.t_out, w.tfifo
        row = Signal(range(R))
        pv = Signal(24)
        xv = Signal(16)
        qv = Signal(24)
        o_gi = Signal(gi_shape)
        first_row = Signal()
        m.d.comb += first_row.eq(t_out.first & (row == 0))
        p_cur = Mux(first_row, 0, pv)
        x_cur = Mux(first_row, 0, xv)
        q_cur = Mux(first_row, 0, qv)
        row_valid = Signal()
        m.d.comb += row_valid.eq((p_cur < L["p_virt"]) & (x_cur < L["w_out"]))
        s_row = Signal(s_bits)
        with m.Switch(row):
            for r in range(R):
                with m.Case(r):
                    m.d.comb += s_row.eq(t_out.s[r])
        m.d.comb += o_gi.eq(t_out.gi)

        meta_layout = data.StructLayout({"gi": gi_shape, "valid": 1, "q": unsigned(24)})
        m.submodules.mfifo = mfifo = SyncFIFOBuffered(width=meta_layout.size, depth=16)
        mf_in = data.View(meta_layout, mfifo.w_data)
        mf_out = data.View(meta_layout, mfifo.r_data)
        m.d.comb += [mf_in.gi.eq(o_gi), mf_in.valid.eq(row_valid), mf_in.q.eq(q_cur)]

        a_take = Signal()
        if bm:
            s_layout = data.StructLayout({"gi": gi_shape, "s": unsigned(s_bits)})
            m.submodules.sfifo = sfifo = SyncFIFOBuffered(width=s_layout.size, depth=16)
            sf_in = data.View(s_layout, sfifo.w_data)
            sf_out = data.View(s_layout, sfifo.r_data)
            m.d.comb += [
                ex.i.payload.eq(arr.o.payload.acc),
                ex.i.valid.eq(arr.o.valid & sfifo.w_rdy & mfifo.w_rdy & tfifo.r_rdy),
                arr.o.ready.eq(ex.i.ready & sfifo.w_rdy & mfifo.w_rdy & tfifo.r_rdy),
                a_take.eq(arr.o.valid & arr.o.ready),
                sf_in.gi.eq(o_gi),
                sf_in.s.eq(s_row),
                sfifo.w_en.eq(a_take),
                # exp -> requant, with S and the biases of the row's group
                rq.i.valid.eq(ex_slice.o.valid),
                ex_slice.o.ready.eq(rq.i.ready),
                sfifo.r_en.eq(ex_slice.o.valid & rq.i.ready),
                rq.i.payload.e.eq(ex_slice.o.payload),
                rq.i.payload.s.eq(sf_out.s),
                rq.c_shift.eq(L["c_shift"]),
            ]
            bias_gi = sf_out.gi
        else:
            m.d.comb += [
                rq.i.payload.acc.eq(arr.o.payload.acc),
                rq.i.valid.eq(arr.o.valid & mfifo.w_rdy & tfifo.r_rdy),
                arr.o.ready.eq(rq.i.ready & mfifo.w_rdy & tfifo.r_rdy),
                a_take.eq(arr.o.valid & arr.o.ready),
            ]
            bias_gi = o_gi
        for c in range(C):
            bias_c = group_field(bias_gi, lambda r, c=c: r[4][c], signed(p.bias_bits), f"bias{c}")
            m.d.comb += rq.i.payload.bias[c].eq(bias_c)
        m.d.comb += [
            rq.out_shift.eq(L["out_shift"]),
            rq.relu.eq(L["relu"]),
            mfifo.w_en.eq(a_take),
            tfifo.r_en.eq(a_take & arr.o.payload.last),
        ]
        with m.If(a_take):
            m.d.sync += [
                row.eq(Mux(arr.o.payload.last, 0, row + 1)),
                pv.eq(p_cur + 1),
                xv.eq(Mux(x_cur + 1 == L["w_in"], 0, x_cur + 1)),
                qv.eq(q_cur + row_valid),
            ]
        w.mf_out, w.mfifo = mf_out, mfifo

    def _logit_out(self, m, w):
        """The row layout after requantization; the logit serializer (last layer on the array)."""
        C, bm, fc_head, gi_shape, p, rq = w.C, w.bm, w.fc_head, w.gi_shape, w.p, w.rq
        code_layout = data.StructLayout({
            "gi": gi_shape, "valid": 1, "q": unsigned(24),
            "x": data.ArrayLayout(unsigned(p.a_bits), C)})
        wr = Signal(code_layout)  # the row presented to the write stage
        wr_valid = Signal()  # a row is presented this cycle (always accepted)
        wr_lx = [Signal(p.lx_bits if bm else 1, name=f"wr_lx{c}") for c in range(C)]

        # logit serializer (without the FC engine: the last layer runs on the array)
        logits = Signal(data.ArrayLayout(signed(rq.out_bits), C))
        n_out = Signal(range(C + 1))
        n_send = Signal(range(C + 1))  # valid logits in the captured row (its group's columns)
        sending = Signal()
        if not fc_head:
            m.d.comb += [self.o.valid.eq(sending)]
            with m.Switch(n_out):
                for c in range(C):
                    with m.Case(c):
                        m.d.comb += self.o.payload.eq(logits[c])
            with m.If(self.o.valid & self.o.ready):
                with m.If(n_out == n_send - 1):
                    m.d.sync += [sending.eq(0), n_out.eq(0)]
                with m.Else():
                    m.d.sync += n_out.eq(n_out + 1)
        w.code_layout, w.logits, w.n_out, w.n_send = code_layout, logits, n_out, n_send
        w.sending, w.wr, w.wr_lx, w.wr_valid = sending, wr, wr_lx, wr_valid

    def _image_load(self, m, w):
        """The image load: straight into the write path, or (``overlap``) staged and copied."""
        C, LOAD, WAIT, code_layout, loading = w.C, w.LOAD, w.WAIT, w.code_layout, w.loading
        npix, overlap, p, plan, staged, state = w.npix, w.overlap, w.p, w.plan, w.staged, w.state
        # image load rows: ``load_row`` goes to the write path while ``load_active``; it is taken
        # when ``load_valid`` and ``load_ready``
        load_row = Signal(code_layout)
        load_active, load_valid, load_ready = Signal(), Signal(), Signal()
        load_take = Signal()
        m.d.comb += load_take.eq(load_valid & load_ready)
        pix_code = Signal(p.a_bits)
        m.d.comb += pix_code.eq(self.i.payload >> plan.pixel_shift)
        if overlap:
            # the stager packs ``C`` pixels per word of the staging memory, one image ahead;
            # ``staged`` is set by the last pixel and cleared when the copy has read the image
            n_words = plan.load_words
            smem = Memory(shape=data.ArrayLayout(unsigned(p.a_bits), C), depth=n_words, init=[])
            m.submodules.stage = smem
            s_wp, s_rp = smem.write_port(), smem.read_port()
            spos = Signal(range(C))
            sword = Signal(range(n_words))
            packed = Signal(data.ArrayLayout(unsigned(p.a_bits), C))
            s_take = Signal()
            m.d.comb += [self.i.ready.eq(~staged), s_take.eq(self.i.valid & ~staged)]
            last_pix = Signal()
            m.d.comb += last_pix.eq(npix == plan.n_pixels - 1)
            for c in range(C):
                m.d.comb += s_wp.data[c].eq(Mux(spos == c, pix_code, packed[c]))
            m.d.comb += [s_wp.addr.eq(sword),
                         s_wp.en.eq(s_take & ((spos == C - 1) | last_pix))]
            with m.If(s_take):
                m.d.sync += [packed[c].eq(s_wp.data[c]) for c in range(C)]
                with m.If(last_pix):
                    m.d.sync += [npix.eq(0), spos.eq(0), sword.eq(0), staged.eq(1)]
                with m.Else():
                    m.d.sync += npix.eq(npix + 1)
                    with m.If(spos == C - 1):
                        m.d.sync += [spos.eq(0), sword.eq(sword + 1)]
                    with m.Else():
                        m.d.sync += spos.eq(spos + 1)
            # the copy: word ``cw`` is read in state LOAD and presented a cycle later
            cw = Signal(range(n_words + 1))
            cw_q = Signal(24)  # ``cw * C``, the word's first pixel, counted up (no multiplier)
            lv = Signal()
            l_q = Signal(24)
            l_adv = Signal()
            copy_issue = Signal()
            m.d.comb += [
                copy_issue.eq((state == LOAD) & staged),
                l_adv.eq(~lv | load_take),
                s_rp.addr.eq(cw),
                s_rp.en.eq(l_adv),
                load_active.eq(lv),
                load_valid.eq(lv),
                load_row.gi.eq(0), load_row.valid.eq(1), load_row.q.eq(l_q),
            ]
            for c in range(C):
                m.d.comb += load_row.x[c].eq(s_rp.data[c])
            with m.If(l_adv):
                m.d.sync += lv.eq(copy_issue)
                with m.If(copy_issue):
                    m.d.sync += [l_q.eq(cw_q), cw.eq(cw + 1), cw_q.eq(cw_q + C)]
                    with m.If(cw == n_words - 1):
                        m.d.sync += [cw.eq(0), cw_q.eq(0), staged.eq(0), loading.eq(1),
                                     state.eq(WAIT)]
        else:
            m.d.comb += [
                load_active.eq(state == LOAD),
                load_valid.eq(self.i.valid),
                self.i.ready.eq(load_ready),
                load_row.gi.eq(0), load_row.valid.eq(1), load_row.q.eq(npix),
                load_row.x[0].eq(pix_code),
            ]
            with m.If(load_take):
                m.d.sync += npix.eq(npix + 1)
        w.load_active, w.load_ready, w.load_row = load_active, load_ready, load_row
        w.load_take, w.load_valid = load_take, load_valid

    def _to_write_path(self, m, w):
        """Requantized rows to the logits or, through the log unit (BM), to the write stage."""
        C, L, bm, code_layout, group_field, lg = w.C, w.L, w.bm, w.code_layout, w.group_field, w.lg
        load_active, load_ready, load_row = w.load_active, w.load_ready, w.load_row
        load_valid, logits, mf_out, mfifo = w.load_valid, w.logits, w.mf_out, w.mfifo
        n_out, n_send, p, retire, rq_o = w.n_out, w.n_send, w.p, w.retire, w.rq_o
        sending, wr, wr_lx, wr_valid = w.sending, w.wr, w.wr_lx, w.wr_valid
        rq_row = Signal(code_layout)
        m.d.comb += [rq_row.gi.eq(mf_out.gi), rq_row.valid.eq(mf_out.valid),
                     rq_row.q.eq(mf_out.q)]
        for c in range(C):
            m.d.comb += rq_row.x[c].eq(rq_o.payload[c][:p.a_bits])
        to_logits = Signal()
        m.d.comb += to_logits.eq(L["last"])

        rq_take = Signal()
        if bm:
            m.submodules.cfifo = cfifo = SyncFIFOBuffered(width=code_layout.size, depth=8)
            cf_in = data.View(code_layout, cfifo.w_data)
            cf_out = data.View(code_layout, cfifo.r_data)
            lg_ready = lg.i.ready & cfifo.w_rdy
            # (outside the If: a continuous assignment, which Icarus evaluates at time 0)
            m.d.comb += load_ready.eq(load_active & lg_ready)
            with m.If(load_active):
                m.d.comb += [
                    lg.i.valid.eq(load_valid & cfifo.w_rdy),
                    cf_in.eq(load_row),
                ]
                for c in range(C):
                    m.d.comb += lg.i.payload[c].eq(load_row.x[c])
            with m.Elif(to_logits):
                m.d.comb += [rq_o.ready.eq(~sending), rq_take.eq(rq_o.valid & ~sending)]
            with m.Else():
                m.d.comb += [
                    rq_o.ready.eq(lg_ready),
                    rq_take.eq(rq_o.valid & lg_ready),
                    lg.i.valid.eq(rq_o.valid & cfifo.w_rdy),
                    cf_in.eq(rq_row),
                ]
                for c in range(C):
                    m.d.comb += lg.i.payload[c].eq(rq_row.x[c])
            m.d.comb += [
                cfifo.w_en.eq(lg.i.valid & lg.i.ready),
                lg.o.ready.eq(1),
                cfifo.r_en.eq(lg.o.valid),
                wr_valid.eq(lg.o.valid),
                wr.eq(cf_out),
            ]
            for c in range(C):
                m.d.comb += wr_lx[c].eq(lg.o.payload[c].lx)
        else:
            m.d.comb += load_ready.eq(load_active)
            with m.If(load_active):
                m.d.comb += [wr_valid.eq(load_valid), wr.eq(load_row)]
            with m.Elif(to_logits):
                m.d.comb += [rq_o.ready.eq(~sending), rq_take.eq(rq_o.valid & ~sending)]
            with m.Else():
                m.d.comb += [rq_o.ready.eq(1), rq_take.eq(rq_o.valid), wr_valid.eq(rq_o.valid),
                             wr.eq(rq_row)]
        m.d.comb += mfifo.r_en.eq(rq_take)
        with m.If(rq_take & to_logits & mf_out.valid):
            m.d.sync += [logits.eq(rq_o.payload), sending.eq(1), n_out.eq(0),
                         n_send.eq(group_field(mf_out.gi, lambda r: r[1], range(C + 1), "l_ncol"))]
        m.d.comb += retire.eq((rq_take & to_logits) | wr_valid)

    def _write_stage(self, m, w):
        """The write stage: a row's channels into distinct banks, or into the FC engine's buffer."""
        C, R, addr_bits, banks, bm, busy_fc = w.C, w.R, w.addr_bits, w.banks, w.bm, w.busy_fc
        fc_head, group_field, groups, layers = w.fc_head, w.group_field, w.groups, w.layers
        lgR, n_groups, p, plan, word, wr = w.lgR, w.n_groups, w.p, w.plan, w.word, w.wr
        wr_lx, wr_valid = w.wr_lx, w.wr_valid
        w_o0 = group_field(wr.gi, lambda r: r[0], 16, "w_o0")
        w_ncol = group_field(wr.gi, lambda r: r[1], range(C + 1), "w_ncol")
        w_dst = group_field(wr.gi, lambda r: r[2], 1, "w_dst")
        w_base = [group_field(wr.gi, lambda r, c=c: r[3][c], addr_bits + 1, f"w_base{c}")
                  for c in range(C)]
        fc = None
        if fc_head:
            # the feeder's rows go to the FC engine's buffer instead (one word per row)
            fc_lp, feeder = plan.layers[-1], layers[-1]
            n_pix = feeder.h_out * feeder.w_out
            fc_rows = [(groups[g][0] == len(layers) - 1, groups[g][1] // C * n_pix)
                       for g in range(n_groups)]
            w_fc = rom(m, wr.gi, [int(r[0]) for r in fc_rows], 1, name="w_fc")
            w_fcbase = rom(m, wr.gi, [r[1] for r in fc_rows], 24, name="w_fcbase")
            t = self.tensors[-1]
            m.submodules.fc = fc = FCEngine(
                p, word, n_ch=feeder.cout, n_pix=n_pix, cols=C, weight=t["w"], bias=t["bias"],
                c_shift=fc_lp.c_shift, out_shift=fc_lp.out_shift, neuron=fc_lp.neuron,
                sign=t.get("sign") if fc_lp.neuron != "bm15" else None)
            wiring.connect(m, wiring.flipped(self.o), fc.o)
            m.d.comb += busy_fc.eq(fc.busy | fc.start)
            m.d.sync += [fc.wr_en.eq(wr_valid & wr.valid & w_fc),
                         fc.wr_addr.eq(w_fcbase + wr.q)]
            for c in range(C):
                m.d.sync += fc.wr_data[c].x.eq(wr.x[c])
                if bm:
                    m.d.sync += fc.wr_data[c].lx.eq(wr_lx[c])
        for b in range(R):
            cb = Signal(range(R), name=f"wcol{b}")
            m.d.comb += cb.eq((b - wr.q - w_o0) & (R - 1)) if lgR else cb.eq(0)
            flat = Signal(addr_bits + 2, name=f"wflat{b}")
            wword = Signal(word, name=f"wword{b}")
            with m.Switch(cb):
                for c in range(C):
                    with m.Case(c):
                        m.d.comb += [flat.eq(w_base[c] + wr.q), wword.x.eq(wr.x[c])]
                        if bm:
                            m.d.comb += wword.lx.eq(wr_lx[c])
            en = wr_valid & wr.valid & (cb < w_ncol)
            if fc_head:
                en = en & ~w_fc
            # one register stage before the bank (timing): the write lands a cycle later, still
            # before the next layer's first read (that waits for the retirement count, which
            # is itself a register behind ``wr_valid``)
            wa_r = Signal(addr_bits + 2 - lgR, name=f"wa_r{b}")
            wd_r = Signal(word, name=f"wd_r{b}")
            m.d.sync += [wa_r.eq(flat[lgR:]), wd_r.eq(wword)]
            for bb in range(2):
                wp = banks[bb][b][1]
                depth_bits = (plan.buf_depth[bb] - 1).bit_length()
                we_r = Signal(name=f"we_r{bb}_{b}")
                m.d.sync += we_r.eq(en & (w_dst == bb))
                m.d.comb += [
                    wp.addr.eq(wa_r[:depth_bits]),
                    wp.data.eq(wd_r),
                    wp.en.eq(we_r),
                ]
        w.fc = fc

    def _sequencer(self, m, w):
        """Phase sequencing: load, run each layer, wait for its rows, start the FC engine."""
        L, LOAD, OUT, PRE, RUN, WAIT, busy_fc = w.L, w.LOAD, w.OUT, w.PRE, w.RUN, w.WAIT, w.busy_fc
        fc, fc_head, gbase, gi, grp, layer = w.fc, w.fc_head, w.gbase, w.gi, w.grp, w.layer
        layers, load_take, loading, npix = w.layers, w.load_take, w.loading, w.npix
        overlap, plan, retired, sending, state = w.overlap, w.plan, w.retired, w.sending, w.state
        wptr = w.wptr
        if overlap:
            # LOAD: the copy (above) moves to WAIT with ``loading`` set. The feeder layer does
            # not start while the FC engine still reads its buffer; when its rows are written
            # the engine starts and the next image is copied in.
            fc_start = Signal()
            m.d.comb += fc.start.eq(fc_start)
            m.d.sync += fc_start.eq(0)
            next_fc = Mux(loading, int(layers[0].feeds_fc), L["next_fc"])
            with m.Switch(state):
                with m.Case(WAIT):
                    need = Mux(loading, plan.load_words, L["rows_total"])
                    with m.If((retired == need) & ~(next_fc & fc.busy)):
                        m.d.sync += retired.eq(0)
                        with m.If(loading):
                            m.d.sync += [loading.eq(0), layer.eq(0), state.eq(PRE), gi.eq(1),
                                         gbase.eq(0), wptr.eq(0), grp.eq(0)]
                        with m.Elif(L["final"]):
                            m.d.sync += [fc_start.eq(1), state.eq(LOAD)]
                        with m.Else():
                            m.d.sync += [layer.eq(layer + 1), state.eq(PRE), gi.eq(gi + 1),
                                         grp.eq(0)]
                with m.Case(PRE):
                    m.d.sync += state.eq(RUN)
            return
        if fc_head:
            # without ``overlap`` the engine runs after the feeder layer; the next image is
            # loaded when its logits have left
            fc_start = Signal()
            m.d.comb += fc.start.eq(fc_start)
            m.d.sync += fc_start.eq(0)
            out_done = ~busy_fc
            done_layer = L["final"]
        else:
            out_done = ~sending
            done_layer = L["last"]
        with m.Switch(state):
            with m.Case(LOAD):
                with m.If(load_take & (npix == plan.n_pixels - 1)):
                    m.d.sync += state.eq(WAIT)
            with m.Case(WAIT):
                # the phase's rows are all written: start the next layer (or the first)
                need = Mux(npix != 0, plan.n_pixels, L["rows_total"])
                with m.If(retired == need):
                    m.d.sync += retired.eq(0)
                    with m.If(npix != 0):
                        m.d.sync += [npix.eq(0), layer.eq(0), state.eq(PRE), gi.eq(1),
                                     gbase.eq(0), wptr.eq(0), grp.eq(0)]
                    with m.Elif(done_layer):
                        m.d.sync += state.eq(OUT)
                        if fc_head:
                            m.d.sync += fc_start.eq(1)
                    with m.Else():
                        m.d.sync += [layer.eq(layer + 1), state.eq(PRE), gi.eq(gi + 1),
                                     grp.eq(0)]
            with m.Case(PRE):
                m.d.sync += state.eq(RUN)
            with m.Case(OUT):
                with m.If(out_done):
                    m.d.sync += state.eq(LOAD)
        return
