"""Float 1.5-BM ResNet-22 to the integer ResNet of :mod:`model.reference.resnet`.

``python -m model.quantize --checkpoint runs/table3/max_lwkd/model.pt --out F.npz --data-dir D``
(the command that quantizes the LeNets: a ResNet-22 checkpoint comes here) calibrates on
training images, writes the export, and scores the float model and the integer reference on the
test set. Its last line is ``accuracy <fraction> (<correct>/<total>)``
for the integer reference.

Quantization (post-training, no fine-tuning):

- Every tensor's scale is the power of two that puts its 99.99th percentile (of the absolute
  value, on ``--calib`` training images) at the top of its code range: unsigned ``a_bits`` codes
  after a ReLU, signed ``a_bits + 1``-bit codes before a residual sum.
- A unit's accumulator scale ``2**-ea`` is the finer of what the window-sum shift needs
  (``c_shift >= 0``) and four bits below the output step once the gain is applied.
- ``Lw = round(2**f * log2((w + dw) * 2**(ea - ex)))``; the folded bias, the batch-norm gain (as
  a log code and a sign) and its offset are rounded in their own units (see the reference).
- Every layer must be 1.5-BM with ``dx = 0`` and a power-of-two ``corr_x``. The integer branch is
  the hard max: a model trained with LSE is quantized as if its op were swapped to max (the float
  hard-max accuracy is reported beside it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..layers import BM15Layer
from ..maxops import MaxOp
from ..reference.resnet import (
    ResNetExport,
    ResNetIntParams,
    load_resnet_export,
    resnet_forward,
    save_resnet_export,
)
from ..resnet import ResNet22

__all__ = ["quantize_resnet", "float_trace", "unit_errors", "main"]

PCT = 99.99


@torch.no_grad()
def float_trace(net: ResNet22, x: torch.Tensor) -> dict:
    """Every tensor the integer network holds: unit outputs (post-ReLU or pre-sum), block
    outputs, and the logits, for float inputs ``x``."""
    units: dict[int, torch.Tensor] = {}

    def u(i, h, relu=True):
        y = net.bns[i](net.layers[i](h))
        y = F.relu(y) if relu else y
        units[i] = y
        return y

    h = u(0, x)
    blocks = []
    for blk in net.plan:
        y = u(blk.c, u(blk.b, u(blk.a, h)), relu=False)
        sc = h if blk.proj is None else u(blk.proj, h, relu=False)
        h = F.relu(sc + y)
        blocks.append(h)
    logits = net.layers[-1](h.mean((2, 3)))
    return {"unit": units, "block": blocks, "logits": logits}


E_RANGE = (-8, 24)  # exponents of a tensor's scale; a dead (all-zero) tensor gets the top one


def _exp_for(v: float, top: int) -> int:
    """Largest ``e`` with ``v * 2**e <= top``, within :data:`E_RANGE`."""
    e = int(math.floor(math.log2(top / max(v, 1e-30))))
    return min(max(e, E_RANGE[0]), E_RANGE[1])


def _pct(t: torch.Tensor) -> float:
    a = t.detach().abs().flatten().double()
    if a.numel() > 1 << 24:
        a = a[torch.randperm(a.numel(), generator=torch.Generator().manual_seed(0))[: 1 << 24]]
    return float(torch.quantile(a, PCT / 100))


def _check_layer(i: int, m) -> int:
    if not isinstance(m, BM15Layer):
        raise ValueError(f"layer {i} is {type(m).__name__}: the integer ResNet is all 1.5-BM")
    if float(m.dx) != 0:
        raise ValueError(f"layer {i}: dx = {float(m.dx)}, the integer ResNet needs dx = 0")
    lc = math.log2(float(m.corr_x))
    if lc != round(lc):
        raise ValueError(f"layer {i}: corr_x = {float(m.corr_x)} is not a power of two")
    return int(round(lc))


def _log_codes(f: int, v: np.ndarray) -> np.ndarray:
    return np.round((2**f) * np.log2(np.maximum(v, 1e-300))).astype(np.int64)


def quantize_resnet(net: ResNet22, calib: torch.Tensor, p: ResNetIntParams | None = None):
    """Integer export of ``net`` (eval mode), calibrated on float images ``calib``.

    Returns ``(export, report)``; ``report`` counts clamped weight codes per unit.
    """
    p = p or ResNetIntParams()
    net = net.eval()
    bm, rs = p.bm, p.rescale
    tr = float_trace(net, calib)
    e_unit = {}
    for i, t in tr["unit"].items():
        relu = i == 0 or any(i in (b.a, b.b) for b in net.plan)
        e_unit[i] = _exp_for(_pct(t), p.a_max if relu else p.pre_max)
    e_block = [_exp_for(_pct(t), p.a_max) for t in tr["block"]]
    e_in = {0: 8}
    e_h = e_unit[0]
    for bi, blk in enumerate(net.plan):
        e_in[blk.a] = e_h
        e_in[blk.b] = e_unit[blk.a]
        e_in[blk.c] = e_unit[blk.b]
        if blk.proj is not None:
            e_in[blk.proj] = e_h
        e_h = e_block[bi]
    units, clamped = [], {}
    for i in range(net.n_convs):
        m, bn = net.layers[i], net.bns[i]
        lc = _check_layer(i, m)
        ex, eo = e_in[i], e_unit[i]
        g = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()
        hh = bn.bias.detach().double().numpy() - g * bn.running_mean.double().numpy()
        gmax = float(np.abs(g).max()) or 1.0
        # the window-sum shift must stay >= 0 and keep the accumulator within acc_bits
        c_max = min(bm.max_c_shift, bm.acc_bits - 3 - (m.fan_in * bm.a_max).bit_length())
        ea = min(max(ex - lc, eo + math.ceil(math.log2(gmax)) + 4), ex - lc + c_max)
        if ea < ex - lc:
            raise OverflowError(f"unit {i}: no accumulator scale fits in {bm.acc_bits} bits")
        wpos = m.w_pos().detach().double().numpy()
        lw_raw = _log_codes(bm.log_frac, wpos * 2.0 ** (ea - ex))
        lw = np.clip(lw_raw, bm.w_log_min, bm.w_log_max)
        clamped[i] = int((lw != lw_raw).sum())
        fb = m.folded_bias().detach().double().numpy()
        lg = _log_codes(rs.log_frac, np.abs(g) * 2.0 ** (eo - ea + p.rq_frac))
        unit = {
            "lw": lw,
            "bias": np.round(fb * 2.0**ea).astype(np.int64),
            "lg": lg,
            "sign": np.sign(g).astype(np.int64),
            "h": np.round(hh * 2.0 ** (eo + p.rq_frac)).astype(np.int64),
            "c_shift": lc + ea - ex,
            "stride": m.stride,
            "pad": m.padding,
        }
        fan = m.fan_in
        bound = bm.exp_max + (fan * bm.a_max << unit["c_shift"]) + int(np.abs(unit["bias"]).max())
        if bound >= 1 << (bm.acc_bits - 1):
            raise OverflowError(f"unit {i}: accumulator bound {bound} exceeds {bm.acc_bits} bits")
        units.append(unit)
    fcm = net.layers[-1]
    lc = _check_layer(net.n_convs, fcm)
    ex = e_h
    ea = ex - lc + 6
    wpos = fcm.w_pos().detach().double().numpy()
    lw_raw = _log_codes(bm.log_frac, wpos * 2.0 ** (ea - ex))
    fc = {
        "lw": np.clip(lw_raw, bm.w_log_min, bm.w_log_max),
        "bias": np.round(fcm.folded_bias().detach().double().numpy() * 2.0**ea).astype(np.int64),
        "c_shift": lc + ea - ex,
    }
    clamped["fc"] = int((fc["lw"] != lw_raw).sum())
    plan = [[b.a, b.b, b.c, -1 if b.proj is None else b.proj] for b in net.plan]
    exps = {"unit": [e_unit[i] for i in range(net.n_convs)], "block": e_block, "input": 8}
    exp = ResNetExport(p, units, fc, plan, exps, {"calibration_images": len(calib)})
    return exp, {"clamped_weight_codes": clamped}


@torch.no_grad()
def unit_errors(net: ResNet22, exp: ResNetExport, images: np.ndarray) -> list[float]:
    """Per conv unit, the largest ``|integer - float|`` over ``images`` as a fraction of the
    unit's output range, where both get the same input: the integer unit its codes, the float
    unit (hard max) those codes dequantized. The float output is clipped to the code range."""
    from ..reference.resnet import bm_unit, residual_add

    p, u, ex = exp.params, exp.units, exp.exps
    errs: dict[int, float] = {}

    def unit(i, x, e_in, relu):
        y = bm_unit(p, x, u[i], relu)
        scale = 2.0 ** -ex["unit"][i]
        xf = torch.from_numpy(x * 2.0**-e_in).float()
        yf = net.bns[i](net.layers[i](xf)).double().numpy()
        lo, hi = (0, p.a_max) if relu else (p.pre_min, p.pre_max)
        yf = np.clip(yf, lo * scale, hi * scale)
        if relu:
            yf = np.maximum(yf, 0)
        errs[i] = float(np.abs(y * scale - yf).max() / (hi * scale))
        return y

    h = unit(0, np.asarray(images, np.int64), exp.exps["input"], True)
    e_h = ex["unit"][0]
    for bi, (a, b, c, proj) in enumerate(exp.plan):
        ya = unit(a, h, e_h, True)
        yb = unit(b, ya, ex["unit"][a], True)
        yc = unit(c, yb, ex["unit"][b], False)
        sc, e_sc = (unit(proj, h, e_h, False), ex["unit"][proj]) if proj >= 0 else (h, e_h)
        h = residual_add(p, yc, ex["unit"][c], sc, e_sc, ex["block"][bi])
        e_h = ex["block"][bi]
    return [errs[i] for i in sorted(errs)]


def hard_max(net: ResNet22) -> ResNet22:
    for m in net.bm_layers():
        m.set_op(MaxOp("max"))
    return net


@torch.no_grad()
def _float_logits(net, x_u8: torch.Tensor, bs: int = 250) -> np.ndarray:
    return torch.cat([net(x_u8[i : i + bs].float() / 256) for i in range(0, len(x_u8), bs)]).numpy()


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m model.quantize", description=__doc__.split("\n")[0]
    )
    p.add_argument("--checkpoint", required=True, help="a ResNet-22 model.pt (model.train_cifar)")
    p.add_argument("--out", required=True, help="the export (.npz)")
    p.add_argument("--arith", choices=("bm",), default="bm", help="the ResNet is BM only")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--calib-images", "--calib", dest="calib", type=int, default=2000,
                   help="training images to calibrate on")
    p.add_argument("--test", action="store_true", help="accepted: the test set is always scored")
    p.add_argument("--test-subset", type=int, default=0, help="test images (0: all 10,000)")
    p.add_argument("--summary", default=None, help="also write the figures to this JSON file")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--jobs", type=int, default=1, help="processes for the integer reference")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from ..train_cifar import CifarConfig, data_label, load_cifar_tensors, load_resnet

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        net = load_resnet(args.checkpoint).eval()
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        print(f"error: {args.checkpoint}: cannot load a ResNet-22 model ({e})", file=sys.stderr)
        return 2
    ops = sorted({m.op.kind for m in net.bm_layers()})
    cfg = CifarConfig(data_dir=args.data_dir, subset=args.calib, test_subset=args.test_subset)
    xtr, _, xte, yte = load_cifar_tensors(cfg)
    if ops == ["max"]:
        float_acc = None  # the float model is the hard-max one below
    else:
        logits = torch.from_numpy(_float_logits(net, xte))
        float_acc = float((logits.argmax(1) == yte).float().mean())
    hard_max(net)
    t0 = time.time()
    try:
        exp, rep = quantize_resnet(net, xtr.float() / 256)
    except (ValueError, OverflowError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    f_logits = _float_logits(net, xte)
    f_pred = f_logits.argmax(1)
    y = yte.numpy()
    save_resnet_export(args.out, exp)
    exp = load_resnet_export(args.out)  # score what was written
    t1 = time.time()
    i_logits = resnet_forward(exp, xte.numpy(), jobs=args.jobs)
    t_ref = time.time() - t1
    i_pred = i_logits.argmax(1)
    n = len(y)
    errs = unit_errors(net, exp, xte.numpy()[:100])
    summary = {
        "checkpoint": args.checkpoint,
        "export": args.out,
        "data": data_label(args.data_dir),
        "test_images": n,
        "float_op": ops,
        "float_accuracy": float((f_pred == y).mean()) if float_acc is None else float_acc,
        "float_hard_max_accuracy": float((f_pred == y).mean()),
        "integer_accuracy": float((i_pred == y).mean()),
        "agreement_with_float_hard_max": float((i_pred == f_pred).mean()),
        "unit_error_max": round(max(errs), 5),
        "unit_error_mean": round(float(np.mean(errs)), 5),
        "reference_s": round(t_ref, 1),
        "quantize_s": round(t1 - t0, 1),
        "clamped_weight_codes": sum(rep["clamped_weight_codes"].values()),
    }
    print(json.dumps(summary, indent=2))
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=2) + "\n")
    c = int((i_pred == y).sum())
    print(f"accuracy {c / n:.4f} ({c}/{n})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
