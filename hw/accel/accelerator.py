"""Whole-network accelerator: a stack of 3x3 (or any square-kernel) valid convolutions and a
final linear layer, run layer by layer through one :class:`hw.blocks.array.SystolicArray`.

Generic over the arithmetic: a :class:`model.params.BMParams` export runs the integer 1.5-BM
network (log codes in memory, max-plus array, exp unit, window-sum correction), a
:class:`model.params.MACParams` export runs the int8 baseline on the same dataflow (multiply-add
array, no log/exp). Equal to :func:`model.reference.ref_network`, logit for logit.

Dataflow
--------
* **Feature maps** live in two ping-pong buffers of ``rows`` block-RAM banks each (SPRAM on
  an iCE40 UltraPlus, see :mod:`hw.blocks.spram`). Channel ``c``
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

* the classifier runs on :class:`hw.blocks.fc.FCEngine`, a ``1 x n_out`` array of the same
  processing elements with its own exp and requantization units; the layer before it (the *feeder*)
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
classifier heads"; the export's ``layer<i>.sign``) always run on :class:`hw.blocks.fc.FCEngine`,
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
from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from model.params import BMParams

from ..blocks.array import SystolicArray
from ..blocks.logexp import ExpUnit, LogUnit
from ..blocks.requant import Requant, window_sum_bits
from ..blocks.util import RegisterSlice, rom
from .drain import DrainSteps
from .feed import FeedSteps
from .plan import NetPlan, plan_network, predict_image_cycles, predict_interval

__all__ = ["Accelerator", "use_spram"]


UP5K_SPRAMS = 4


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
    from ..blocks.spram import spram_fits

    return 2 * rows <= UP5K_SPRAMS and all(spram_fits(width, d) for d in depths)


class Accelerator(FeedSteps, DrainSteps, wiring.Component):
    """The whole integer network on one systolic array; see the module documentation."""

    def __init__(self, plan: NetPlan, tensors):
        self.plan = plan
        self.params = plan.params
        self.bm = isinstance(plan.params, BMParams)
        if len(tensors) != len(plan.layers):
            raise ValueError(f"{len(plan.layers)} layers but {len(tensors)} tensor sets")
        self.tensors = tensors
        self.n_pixels = plan.n_pixels  # pixels per image in, logits per image out
        self.n_logits = plan.n_logits
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
        # the write stage back into the array (see hw.accel.plan.POST_BM)
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
                    from ..blocks.spram import SPRAMBank

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
