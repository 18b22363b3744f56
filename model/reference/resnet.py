"""Bit-exact NumPy reference of the integer 1.5-BM ResNet-22 (no torch).

It extends :mod:`model.reference` (whose log unit, exp unit, max-plus branch and window-sum
correction it uses unchanged) with what the ResNet needs: zero padding, 1x1 convolutions with
stride 2, the batch norm folded in, residual additions and global average pooling. Nothing in it
multiplies except shifts by constants.

Integer ResNet-22 inference (``p`` is a :class:`ResNetIntParams`)
----------------------------------------------------------------
Every tensor is integer codes with its own power-of-two scale: a value is ``code * 2**-e``.
Post-ReLU tensors are unsigned ``a_bits`` codes; the two inputs of a residual sum are signed
``a_bits + 1``-bit codes.

1. **BM unit** (a 1.5-BM conv and its batch norm ``y = g*z + h``), input codes ``X``:

   a. *Padding* is zero codes (log-unit zero flag); a 1x1 conv with stride 2 reads every other
      row and column.
   b. *Branch* as in :mod:`model.reference`: ``Lx = LOG(X)``, ``M = max_i (Lx_i + Lw_oi)``,
      ``E = EXP(M)`` with ``p.bm``'s tables.
   c. *Correction*: ``z = E - (S << c_shift) + B[o]`` with ``S`` the window sum of ``X``
      (exact integers, ``acc`` units).
   d. *Rescale* (the batch-norm gain, per output channel) in the log domain with ``p.rescale``'s
      tables: ``V = sign(z) * s[o] * EXP'(LOG'(|z|) + Lg[o])`` (``V = 0`` when ``z = 0``) where
      ``LOG'`` is the log unit widened to any width (leading-one detector plus the same mantissa
      table) and ``s[o]`` is the sign of the gain (a negation).
   e. *Requantization*: ``y = (V + H[o] + 2**(r-1)) >> r`` (``r = p.rq_frac``), then saturation:
      ``0 .. 2**a_bits - 1`` after a ReLU, ``-2**a_bits .. 2**a_bits - 1`` before a residual sum.

2. **Residual sum**: each side is brought to the output scale by a shift (a right shift rounds
   half up), the two are added, and the sum saturates to ``0 .. 2**a_bits - 1`` (the ReLU).
3. **Global average pooling** over ``H x W = 2**k`` positions: ``(sum + 2**(k-1)) >> k``.
4. **Classifier** (1.5-BM linear, no batch norm): ``z = E - (S << c_shift) + B`` as in 1c; the
   integer ``z`` are the logits. The class is the first maximal logit.

The export is a ``bm-netexport`` file (:mod:`model.export`: the same container, checksum, atomic
write and :class:`~model.export.ExportError` as the LeNet exports) of graph ``"resnet22"``: arrays
``unit<i>.{lw,bias,lg,sign,h}`` and ``fc.{lw,bias}``, and in ``meta`` the params, the block
``plan``, every tensor's exponent (``exps``), each unit's ``c_shift``, ``stride`` and ``pad``,
and ``metadata``. :func:`load_resnet_export` reads and checks it; :func:`resnet_forward`
runs it on a batch of uint8 images ``(N, 3, 32, 32)`` (the input codes are the pixels, scale
``2**-8``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..params import BMParams, LayerSpec
from .batch import batch_bm_layer
from .core import ref_exp

__all__ = [
    "ResNetIntParams",
    "log_wide",
    "rescale",
    "bm_unit",
    "residual_add",
    "gap",
    "bm_linear",
    "resnet_forward",
    "save_resnet_export",
    "load_resnet_export",
    "ResNetExport",
]

def _bm_default() -> BMParams:
    return BMParams(
        a_bits=8,
        log_frac=7,
        mant_bits=7,
        w_log_bits=13,
        exp_table_bits=12,
        exp_bits=44,
        bias_bits=44,
        acc_bits=48,
        max_c_shift=31,
    )


def _rescale_default() -> BMParams:
    return BMParams(
        a_bits=8, log_frac=8, mant_bits=8, w_log_bits=16, exp_table_bits=14, exp_bits=44
    )


@dataclass(frozen=True)
class ResNetIntParams:
    """Widths and tables of the integer ResNet (stdlib only).

    ``bm``: the branch's log/exp units (:class:`model.params.BMParams`); ``rescale``: the log/exp
    units of the per-channel batch-norm gain (only their tables and ``exp_bits`` are used);
    ``rq_frac``: fraction bits kept between the rescale and the final rounding shift.
    """

    bm: BMParams = field(default_factory=_bm_default)
    rescale: BMParams = field(default_factory=_rescale_default)
    rq_frac: int = 4

    def __post_init__(self):
        if not 0 <= self.rq_frac <= 16:
            raise ValueError(f"rq_frac must be in 0..16, not {self.rq_frac!r}")

    @property
    def a_max(self) -> int:
        return self.bm.a_max

    @property
    def pre_min(self) -> int:
        return -(1 << self.bm.a_bits)

    @property
    def pre_max(self) -> int:
        return (1 << self.bm.a_bits) - 1

    def to_dict(self) -> dict:
        return {"bm": asdict(self.bm), "rescale": asdict(self.rescale), "rq_frac": self.rq_frac}

    @classmethod
    def from_dict(cls, d: dict) -> ResNetIntParams:
        return cls(BMParams(**d["bm"]), BMParams(**d["rescale"]), int(d["rq_frac"]))


def _i64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.int64)


# -- stages ------------------------------------------------------------------------------------
def log_wide(p: BMParams, u):
    """The log unit for unsigned integers of any width: ``(L, zero)``.

    ``L = e * 2**f + LOG[m]`` with ``e`` the leading-one position and ``m`` the ``mant_bits``
    bits below it (truncated, zero-filled), as :func:`model.reference.ref_log` does for codes.
    """
    u = _i64(u)
    if np.any(u < 0):
        raise ValueError("log_wide takes unsigned values")
    zero = u == 0
    uu = np.where(zero, 1, u)
    e = np.zeros_like(uu)
    for b in (32, 16, 8, 4, 2, 1):  # exact leading-one position, no float rounding
        hi = (uu >> (e + b)) > 0
        e = np.where(hi, e + b, e)
    frac = uu - (np.int64(1) << e)
    mb = p.mant_bits
    m = np.where(e >= mb, frac >> np.maximum(e - mb, 0), frac << np.maximum(mb - e, 0))
    lx = (e << p.log_frac) + np.asarray(p.log_table, dtype=np.int64)[m]
    return np.where(zero, 0, lx), zero


def rescale(p: ResNetIntParams, z, lg, sign):
    """Step 1d: ``sign(z) * sign[o] * EXP'(LOG'(|z|) + Lg[o])`` over the channel axis 1."""
    z = _i64(z)
    shape = (1, -1) + (1,) * (z.ndim - 2)
    lg, sign = _i64(lg).reshape(shape), _i64(sign).reshape(shape)
    lz, zz = log_wide(p.rescale, np.abs(z))
    v = ref_exp(p.rescale, lz + lg, zz)
    return np.where(z < 0, -v, v) * sign


def requant(p: ResNetIntParams, v, h, relu: bool):
    """Step 1e: ``(V + H + 2**(r-1)) >> r``, saturated."""
    v = _i64(v)
    shape = (1, -1) + (1,) * (v.ndim - 2)
    r = p.rq_frac
    y = (v + _i64(h).reshape(shape) + ((1 << r) >> 1)) >> r
    return np.clip(y, 0, p.a_max) if relu else np.clip(y, p.pre_min, p.pre_max)


def _branch_acc(p: ResNetIntParams, x, lw, bias, c_shift: int, k: int, stride: int, pad: int):
    """Steps 1a-1c on codes ``x`` ``(N, C, H, W)``: ``z`` ``(N, O, Ho, Wo)``; the branch and
    the correction are the chain's (:func:`model.reference.batch.batch_bm_layer`)."""
    bm = p.bm
    x = _i64(x)
    if np.any((x < 0) | (x > bm.a_max)):
        raise ValueError(f"activation codes must be in 0..{bm.a_max}")
    lw = _i64(lw)
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    if stride > 1:
        if k != 1:
            raise ValueError("stride > 1 is supported for 1x1 convolutions only")
        x = x[:, :, ::stride, ::stride]
    spec = LayerSpec("conv", lw.shape[1], lw.shape[0], k, c_shift=c_shift)
    return batch_bm_layer(bm, spec, x, lw, bias).transpose(0, 3, 1, 2)


def bm_unit(p: ResNetIntParams, x, t: dict, relu: bool):
    """Step 1: one 1.5-BM conv with its folded batch norm; ``t`` holds ``lw`` ``(O, C, k, k)``,
    ``bias``, ``lg``, ``sign``, ``h`` and the scalars ``c_shift``, ``stride``, ``pad``."""
    lw = _i64(t["lw"])
    z = _branch_acc(
        p, x, lw, t["bias"], int(t["c_shift"]), lw.shape[-1], int(t["stride"]), int(t["pad"])
    )
    return requant(p, rescale(p, z, t["lg"], t["sign"]), t["h"], relu)


def align(v, e_from: int, e_to: int):
    """Codes of scale ``2**-e_from`` to scale ``2**-e_to`` (a right shift rounds half up)."""
    v = _i64(v)
    d = int(e_from) - int(e_to)
    if d > 0:
        return (v + (1 << (d - 1))) >> d
    return v << (-d)


def residual_add(p: ResNetIntParams, a, ea: int, b, eb: int, e_out: int):
    """Step 2: ``ReLU(a + b)`` at scale ``2**-e_out``, saturated to unsigned codes."""
    return np.clip(align(a, ea, e_out) + align(b, eb, e_out), 0, p.a_max)


def gap(x):
    """Step 3: mean over the ``2**k`` positions as a sum and a rounding shift."""
    x = _i64(x)
    n = x.shape[2] * x.shape[3]
    k = n.bit_length() - 1
    if 1 << k != n:
        raise ValueError(f"global average pooling needs a power-of-two area, not {n}")
    return (x.sum(axis=(2, 3)) + ((1 << k) >> 1)) >> k


def bm_linear(p: ResNetIntParams, x, t: dict):
    """Step 4: the 1.5-BM classifier on ``(N, C)`` codes; integer logits ``(N, classes)``."""
    x = _i64(x)
    lw = _i64(t["lw"])
    z = _branch_acc(
        p, x[:, :, None, None], lw[:, :, None, None], t["bias"], int(t["c_shift"]), 1, 1, 0
    )
    return z[:, :, 0, 0]


# -- the network -------------------------------------------------------------------------------
@dataclass
class ResNetExport:
    """An integer ResNet: ``units[i]`` per conv (dict of arrays and scalars), ``fc``, ``plan``
    (``[a, b, c, proj or -1]`` per block), the exponent of every tensor and the params."""

    params: ResNetIntParams
    units: list[dict]
    fc: dict
    plan: list[list[int]]
    exps: dict
    meta: dict = field(default_factory=dict)


def resnet_forward(exp: ResNetExport, images, *, batch: int = 250, jobs: int = 1) -> np.ndarray:
    """Integer logits of uint8 images ``(N, 3, 32, 32)`` (pixel codes, scale ``2**-8``).

    ``jobs > 1`` shares the batches among that many processes (the result is the same)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (3, 32, 32):
        raise ValueError(f"images must be (N, 3, 32, 32), not {images.shape}")
    chunks = [images[i : i + batch] for i in range(0, len(images), batch)]
    if jobs > 1 and len(chunks) > 1:
        from concurrent.futures import ProcessPoolExecutor
        from functools import partial

        with ProcessPoolExecutor(min(jobs, len(chunks))) as ex:
            outs = list(ex.map(partial(_forward, exp), chunks))
    else:
        outs = [_forward(exp, c) for c in chunks]
    return np.concatenate(outs) if outs else np.zeros((0, 10), np.int64)


def _forward(exp: ResNetExport, x) -> np.ndarray:
    p, u, ex = exp.params, exp.units, exp.exps
    h = bm_unit(p, x, u[0], relu=True)
    e_h = ex["unit"][0]
    for bi, (a, b, c, proj) in enumerate(exp.plan):
        y = bm_unit(p, bm_unit(p, bm_unit(p, h, u[a], True), u[b], True), u[c], False)
        if proj >= 0:
            sc, e_sc = bm_unit(p, h, u[proj], False), ex["unit"][proj]
        else:
            sc, e_sc = h, e_h
        e_out = ex["block"][bi]
        h = residual_add(p, y, ex["unit"][c], sc, e_sc, e_out)
        e_h = e_out
    return bm_linear(p, gap(h), exp.fc)


# -- export file -------------------------------------------------------------------------------
_UNIT_ARRAYS = ("lw", "bias", "lg", "sign", "h")
_UNIT_SCALARS = ("c_shift", "stride", "pad")


def _arrays_meta(exp: ResNetExport):
    arrays = {}
    for i, t in enumerate(exp.units):
        for k in _UNIT_ARRAYS:
            arrays[f"unit{i}.{k}"] = np.ascontiguousarray(t[k], dtype=np.int64)
    for k in ("lw", "bias"):
        arrays[f"fc.{k}"] = np.ascontiguousarray(exp.fc[k], dtype=np.int64)
    meta = {
        "graph": "resnet22",
        "params": exp.params.to_dict(),
        "plan": [list(map(int, b)) for b in exp.plan],
        "exps": exp.exps,
        "scalars": [{k: int(t[k]) for k in _UNIT_SCALARS} for t in exp.units],
        "fc_c_shift": int(exp.fc["c_shift"]),
        "metadata": exp.meta,
    }
    return arrays, meta


def save_resnet_export(path, exp: ResNetExport) -> None:
    """Write ``exp`` as a ``bm-netexport`` file of graph ``"resnet22"``, atomically."""
    from ..export import write_container

    arrays, meta = _arrays_meta(exp)
    write_container(path, meta, arrays)


def load_resnet_export(path) -> ResNetExport:
    """Read and validate an export; a corrupt or mismatched file raises
    :class:`model.export.ExportError` (a ``ValueError``) naming the file."""
    from ..export import ExportError, read_container

    meta, data, _ = read_container(path, "resnet22")
    try:
        params = ResNetIntParams.from_dict(meta["params"])
        units = []
        for i, sc in enumerate(meta["scalars"]):
            t = {k: data[f"unit{i}.{k}"] for k in _UNIT_ARRAYS}
            t.update({k: int(sc[k]) for k in _UNIT_SCALARS})
            o = t["lw"].shape[0]
            if t["lw"].ndim != 4 or any(t[k].shape != (o,) for k in ("bias", "lg", "sign", "h")):
                raise ValueError(f"unit {i} has inconsistent shapes")
            units.append(t)
        fc = {"lw": data["fc.lw"], "bias": data["fc.bias"], "c_shift": int(meta["fc_c_shift"])}
        exp = ResNetExport(params, units, fc, meta["plan"], meta["exps"], meta.get("metadata", {}))
        extra = set(data) - {f"unit{i}.{k}" for i in range(len(units)) for k in _UNIT_ARRAYS}
        extra -= {"fc.lw", "fc.bias"}
        if extra:
            raise ValueError(f"unexpected members {sorted(extra)}")
        _check_chain(exp)
    except (KeyError, TypeError, ValueError) as err:
        what = f"missing field {err}" if isinstance(err, KeyError) else str(err)
        raise ExportError(f"{Path(path)}: invalid ResNet export: {what}") from err
    return exp


def _check_chain(exp: ResNetExport) -> None:
    """Channel counts must chain through the plan."""
    u = exp.units
    ch = u[0]["lw"].shape[0]
    for a, b, c, proj in exp.plan:
        if u[a]["lw"].shape[1] != ch or u[b]["lw"].shape[1] != u[a]["lw"].shape[0]:
            raise ValueError(f"channel mismatch in block {a}..{c}")
        if u[c]["lw"].shape[1] != u[b]["lw"].shape[0]:
            raise ValueError(f"channel mismatch in block {a}..{c}")
        out = u[c]["lw"].shape[0]
        if (proj >= 0 and u[proj]["lw"].shape[:2] != (out, ch)) or (proj < 0 and out != ch):
            raise ValueError(f"shortcut mismatch in block {a}..{c}")
        ch = out
    if exp.fc["lw"].shape[1] != ch:
        raise ValueError(f"the classifier expects {exp.fc['lw'].shape[1]} inputs, not {ch}")
