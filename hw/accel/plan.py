"""The plan of a network on the accelerator, derived once from the export's layers: each
layer's geometry, groups and memory layout (:class:`NetPlan`), and the cycle model
(:func:`predict_image_cycles`, :func:`predict_interval`), exact against the RTL
(:class:`hw.accel.accelerator.Accelerator` builds from the same plan; the tests compare them cycle
for cycle).

The cycle model's pipeline constants are the units' own latencies (:mod:`hw.blocks.logexp`,
:mod:`hw.blocks.requant`, :class:`hw.blocks.util.RegisterSlice`) plus the accelerator's registers,
named below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from model.params import BMParams, MACParams

from ..blocks.array import predict_cycles
from ..blocks.fc import FC_HEADS, fc_cycles
from ..blocks.logexp import ExpUnit, LogUnit
from ..blocks.requant import Requant
from ..blocks.util import RegisterSlice, check_count

__all__ = ["LayerPlan", "NetPlan", "plan_network", "predict_image_cycles", "predict_interval",
           "POST_BM", "POST_MAC", "LAST_BM", "LAST_MAC", "LOAD_BM", "LOAD_MAC", "COPY_BM",
           "COPY_MAC", "FC_GAP"]


def _pad_plane(hw: int, rows: int) -> int:
    """Smallest ``n >= hw`` with ``n = 1 (mod rows)`` (any ``n`` when ``rows == 1``)."""
    if rows == 1:
        return hw
    return hw + ((1 - hw) % rows)


@dataclass(frozen=True)
class LayerPlan:
    """One layer as the accelerator runs it (all sizes in codes)."""

    cin: int
    k: int
    h_in: int
    w_in: int
    hwp_in: int
    cout: int
    h_out: int
    w_out: int
    hwp_out: int
    c_shift: int
    out_shift: int
    relu: bool
    last: bool
    src: int  # buffer read
    dst: int  # buffer written (unused by the last layer)
    wbase: int  # weight address of the first group
    group0: int  # index of the first group in the group table
    on_array: bool = True  # False: the last layer, run by the FC engine (``NetPlan.fc_head``)
    feeds_fc: bool = False  # its output goes to the FC engine's buffer
    neuron: str = "bm15"  # the layer's neuron (``LayerSpec.neuron``; lns and bm2 on the FC engine)

    @property
    def fan_in(self) -> int:
        return self.cin * self.k * self.k

    @property
    def p_virt(self) -> int:
        """Virtual pixels computed: the raster over the input width up to the last output."""
        return (self.h_out - 1) * self.w_in + self.w_out


@dataclass(frozen=True)
class NetPlan:
    params: BMParams | MACParams
    rows: int
    cols: int
    input_shape: tuple[int, int, int]
    pixel_shift: int
    layers: tuple[LayerPlan, ...]
    groups: tuple[tuple[int, int, int], ...]  # (layer or -1 for the load, o0, valid columns)
    buf_depth: tuple[int, int]
    w_depth: int
    overlap: bool = False

    @property
    def w_pack(self) -> int:
        """Weight columns per memory: two when a column is at most 1,024 codes deep, so that a
        pair fills one 1024 x 18 block RAM (ECP5 DP16KD, Xilinx RAMB18, Gowin BSRAM) instead
        of half-filling two."""
        return 2 if self.w_depth <= 1024 and self.cols > 1 else 1

    @property
    def array_layers(self) -> tuple[LayerPlan, ...]:
        """The layers the main array runs (all but the classifier when :attr:`fc_head`)."""
        return tuple(lp for lp in self.layers if lp.on_array)

    @property
    def fc_head(self) -> bool:
        """The classifier runs on the FC engine (:class:`hw.blocks.fc.FCEngine`): with ``overlap``,
        and always for a signed head (``lns``, ``bm2``)."""
        return not self.layers[-1].on_array

    @property
    def head(self) -> str:
        """The classifier's neuron (:data:`hw.blocks.fc.FC_HEADS`)."""
        return self.layers[-1].neuron

    @property
    def load_words(self) -> int:
        """``overlap``: rows of ``cols`` pixels that the staged image is copied in as."""
        return math.ceil(self.n_pixels / self.cols)

    def tiles(self, lp: LayerPlan) -> int:
        return math.ceil(lp.p_virt / self.rows)

    def n_groups(self, lp: LayerPlan) -> int:
        return math.ceil(lp.cout / self.cols)

    @property
    def n_logits(self) -> int:
        return self.layers[-1].cout

    @property
    def n_pixels(self) -> int:
        c, h, w = self.input_shape
        return c * h * w

    @property
    def ops(self) -> int:
        """Useful max-plus or multiply-add operations per image."""
        return sum(lp.fan_in * lp.cout * lp.h_out * lp.w_out for lp in self.layers)

    @property
    def ideal_cycles(self) -> float:
        """Operations divided by processing elements."""
        return self.ops / (self.rows * self.cols)


def plan_network(params, layers, input_shape=(1, 28, 28), pixel_shift: int = 0, *,
                 rows: int = 16, cols: int = 16, overlap: bool = False) -> NetPlan:
    """Lay a network of :class:`model.params.LayerSpec` out on a ``rows x cols`` accelerator.

    ``overlap``: pipeline consecutive images. The last layer (a linear one, after at least one
    convolution) runs on its own engine (:class:`hw.blocks.fc.FCEngine`) beside the next image's
    first layers, and the image is staged while the previous one computes and copied in ``cols``
    pixels per cycle (single-channel images).

    The classifier's neuron (``layers[-1].neuron``) picks the head: ``bm15`` runs on the main
    array (or on the FC engine with ``overlap``); ``lns`` and ``bm2`` always run on the FC
    engine, which then also serves a plan without ``overlap`` (the engine runs after the
    feeder layer, and the next image waits for its logits). A head the hardware does not
    build, a signed neuron before the last layer, or a signed head on MAC params raises
    ``ValueError``.
    """
    check_count("rows", rows)
    check_count("cols", cols)
    if rows & (rows - 1):
        raise ValueError(f"rows must be a power of two, not {rows!r}")
    if cols > rows:
        raise ValueError(f"cols must be <= rows ({rows}), not {cols!r}")
    if not layers:
        raise ValueError("the network has no layers")
    c, h, w = c0, h0, w0 = input_shape
    head = _check_heads(params, layers)
    fc_head = overlap or head != "bm15"
    if fc_head and (len(layers) < 2 or layers[-1].kind != "linear"):
        why = f"a {head!r} head (on the FC engine)" if head != "bm15" else "overlap"
        raise ValueError(f"{why} needs a network that ends in a linear layer after at least "
                         "one other layer")
    if overlap and c != 1:
        raise ValueError(f"overlap stages single-channel images, not {c} channels")
    plans, groups = [], [(-1, 0, cols if overlap else 1)]
    hwp = _pad_plane(h * w, rows)
    sizes = [[c * hwp], []]  # words stored in each buffer, per map
    wbase = 0
    src = 0
    for idx, spec in enumerate(layers):
        last = idx == len(layers) - 1
        if spec.pool != 1:
            raise NotImplementedError(f"layer {idx}: max-pool is not supported by the accelerator")
        if spec.kind == "conv":
            if spec.in_ch != c:
                raise ValueError(f"layer {idx}: expects {spec.in_ch} channels, gets {c}")
            k = spec.k
        else:
            if spec.in_ch != c * h * w or h != w:
                raise ValueError(
                    f"layer {idx}: a linear layer needs a square input map of {spec.in_ch} "
                    f"codes, gets {c}x{h}x{w}")
            k = h
        ho, wo = h - k + 1, w - k + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"layer {idx}: {h}x{w} input is smaller than the {k}x{k} kernel")
        if last == spec.relu:
            raise ValueError(f"layer {idx}: only the last layer may (and must) output logits")
        hwp_out = _pad_plane(ho * wo, rows)
        on_array = not (fc_head and last)
        feeds_fc = fc_head and idx == len(layers) - 2
        lp = LayerPlan(cin=c, k=k, h_in=h, w_in=w, hwp_in=hwp, cout=spec.out_ch, h_out=ho,
                       w_out=wo, hwp_out=hwp_out, c_shift=spec.c_shift, out_shift=spec.out_shift,
                       relu=spec.relu, last=last, src=src, dst=1 - src, wbase=wbase,
                       group0=len(groups), on_array=on_array, feeds_fc=feeds_fc,
                       neuron=spec.neuron)
        plans.append(lp)
        if on_array:
            for g in range(math.ceil(spec.out_ch / cols)):
                groups.append((idx, g * cols, min(cols, spec.out_ch - g * cols)))
            wbase += math.ceil(spec.out_ch / cols) * lp.fan_in
            # reads reach past the map by up to a tile of garbage pixels
            tiles = math.ceil(lp.p_virt / rows)
            reach = (c - 1) * hwp + (k - 1) * w + (k - 1) + tiles * rows
            sizes[src].append(reach)
        if not last and not feeds_fc:
            sizes[1 - src].append(spec.out_ch * hwp_out)
        c, h, w, hwp, src = spec.out_ch, ho, wo, hwp_out, 1 - src
    if overlap:  # the staged image is copied in whole rows of ``cols`` pixels
        sizes[0].append(math.ceil(c0 * h0 * w0 / cols) * cols)
    depth = tuple(1 << max(1, math.ceil(max(s or [1]) / rows) - 1).bit_length() for s in sizes)
    w_depth = 1 << max(1, (wbase - 1).bit_length())
    return NetPlan(params=params, rows=rows, cols=cols, input_shape=tuple(input_shape),
                   pixel_shift=pixel_shift, layers=tuple(plans), groups=tuple(groups),
                   buf_depth=depth, w_depth=w_depth, overlap=overlap)


def _check_heads(params, layers) -> str:
    """The classifier's neuron, when the hardware builds it; else ``ValueError``."""
    for idx, spec in enumerate(layers):
        neuron = getattr(spec, "neuron", "bm15")
        if neuron not in FC_HEADS:
            raise ValueError(f"layer {idx}: the accelerator builds the neurons "
                             f"{', '.join(FC_HEADS)}, not {neuron!r}")
        if neuron != "bm15" and idx != len(layers) - 1:
            raise ValueError(f"layer {idx}: a {neuron!r} neuron is built only as the classifier "
                             "(the last layer)")
        if neuron != "bm15" and not isinstance(params, BMParams):
            raise ValueError(f"layer {idx}: a {neuron!r} head needs BM params, not "
                             f"{type(params).__name__}")
    return getattr(layers[-1], "neuron", "bm15")


def _layer_cycles(plan: NetPlan, lp: LayerPlan) -> int:
    """:func:`hw.blocks.array.predict_cycles` of one layer on the main array."""
    return predict_cycles(plan.rows, plan.cols, fan_in=lp.fan_in,
                          tiles=plan.n_groups(lp) * plan.tiles(lp))


def _array_body(plan: NetPlan) -> int:
    """The array layers of the ``overlap`` form, each with its write-back, back to back."""
    post = POST_BM if isinstance(plan.params, BMParams) else POST_MAC
    # (the last one's rows go to the FC engine: no next layer's first beat to feed)
    return sum(_layer_cycles(plan, lp) + post for lp in plan.array_layers) - FEED_STAGE


def _fc_cycles(plan: NetPlan) -> int:
    lp = plan.layers[-1]
    return fc_cycles(plan.params, lp.fan_in, lp.cout, lp.neuron)


def predict_image_cycles(plan: NetPlan) -> int:
    """Latency of one image: cycles from its first pixel taken to its last logit taken, with
    nothing else in flight, a source that never stalls and a sink that is always ready. Exact
    (the tests compare it with simulation) as long as a group's logits leave before the next
    group's row arrives (``cols <= max(fan_in, rows)``, true of every network here).

    Per layer the array needs :func:`hw.blocks.array.predict_cycles` (first beat in to last row out,
    fill and drain included); after it the last row takes ``POST_BM`` or ``POST_MAC`` cycles
    through the exp, requantization and log units and the write-back before the next layer's
    first beat. Without ``overlap`` the image streams in one pixel a cycle through the log unit
    and the write stage (``LOAD_BM``, ``LOAD_MAC`` after the last pixel), and the last layer
    ends when its logits (the first row of its last tile) leave; with a signed head the array
    layers run instead, then the FC engine (:func:`hw.blocks.fc.fc_cycles`). With ``overlap``, the
    image streams into the staging memory (one cycle a pixel), is copied in ``load_words``
    rows, the array layers run, and the FC engine takes :func:`hw.blocks.fc.fc_cycles`.
    """
    R, C = plan.rows, plan.cols
    bm = isinstance(plan.params, BMParams)
    if plan.overlap:
        return (plan.n_pixels + plan.load_words + (COPY_BM if bm else COPY_MAC)
                + _array_body(plan) + _fc_cycles(plan))
    total = plan.n_pixels + (LOAD_BM if bm else LOAD_MAC)
    if plan.fc_head:
        return total + _array_body(plan) + _fc_cycles(plan)
    for lp in plan.layers:
        a = _layer_cycles(plan, lp)
        if lp.last:
            tail = lp.cout - (plan.n_groups(lp) - 1) * C  # logits of the last group
            total += a - (R - 1) + (LAST_BM if bm else LAST_MAC) + tail
        else:
            total += a + (POST_BM if bm else POST_MAC)
    return total


def predict_interval(plan: NetPlan) -> int:
    """Cycles per image in steady state: between the last logits of consecutive images when
    the images follow each other with no gap (source never stalls, sink always ready). This is
    the throughput figure; the tests compare it with simulation.

    Without ``overlap`` an image starts when the previous one has left: after the logits, the
    other ``rows - 1`` rows of the last tile drain (they wait while the logits leave), and the
    state machine takes two cycles, so the interval is the latency plus ``rows + 1``. With a
    signed head on the FC engine nothing drains: the next image's first pixel is taken two
    cycles after the last logit (the engine's ``busy`` register, the state change), so the
    interval is the latency plus 1. With ``overlap``
    the main array runs back to back: the copy of the staged image and the array layers. The FC
    engine runs beside them; it only sets the pace when it takes longer than the layers before
    the feeder (the feeder waits for it).
    """
    bm = isinstance(plan.params, BMParams)
    if not plan.overlap:
        return predict_image_cycles(plan) + (1 if plan.fc_head else plan.rows + 1)
    main = plan.load_words + (COPY_BM if bm else COPY_MAC) + _array_body(plan)
    feeder = plan.array_layers[-1]
    post = POST_BM if bm else POST_MAC
    fc_bound = _fc_cycles(plan) + FC_GAP + _layer_cycles(plan, feeder) + post
    return max(main, fc_bound)


# pipeline latencies around the array, in cycles (see predict_image_cycles)
# Pipeline latencies around the array, in cycles (see predict_image_cycles): the units' own
# latencies, plus the accelerator's registers named here.
WRITE_BACK = 2  # the last unit to the banks: the write stage's register, the retirement count
LAYER_TABLE = 1  # the registered layer table: a layer's first beat a cycle after it is selected
FEED_STAGE = 1  # stage R of the feeder: the bank words registered before the array
CAPTURE = 2  # the last layer's logits: the capture register, then the first logit on ``o``
LOAD_WRITE = 1  # without overlap: the last pixel's write (after the log unit, BM)
COPY_EXTRA = 2  # overlap: the staging memory's read and the write (beside the log unit, BM)


def _after_array(bm: bool) -> int:
    """A row from the array's output to the requantizer's register slice: the exp unit and its
    slice (BM), then requantization and its slice."""
    exp = ExpUnit.latency + RegisterSlice.latency if bm else 0
    return exp + Requant.latency + RegisterSlice.latency


# a layer's last row to the next layer's first beat; the last layer's logits; the image load
POST_BM = _after_array(True) + LogUnit.latency + WRITE_BACK + LAYER_TABLE + FEED_STAGE
POST_MAC = _after_array(False) + WRITE_BACK + LAYER_TABLE + FEED_STAGE
LAST_BM, LAST_MAC = _after_array(True) + CAPTURE, _after_array(False) + CAPTURE
LOAD_BM, LOAD_MAC = LogUnit.latency + LOAD_WRITE + FEED_STAGE, LOAD_WRITE + FEED_STAGE
COPY_BM, COPY_MAC = LogUnit.latency + COPY_EXTRA + FEED_STAGE, COPY_EXTRA + FEED_STAGE
FC_GAP = 1  # overlap: the FC engine's busy low to the feeder layer's first beat
