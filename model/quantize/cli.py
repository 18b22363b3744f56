"""The command line: ``python -m model.quantize``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..export import save_export
from ..params import PRESETS, BMParams
from .integer import quantize
from .qat import float_logits, int_logits, qat_finetune
from .stages import check_stages, stages_of, to_float_input

__all__ = ["load_float_net", "parse_args", "main"]


def load_float_net(checkpoint: str | Path) -> nn.Module:
    """A trained float net from a checkpoint written by :mod:`model.train`."""
    from ..train import load_model

    return load_model(checkpoint)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m model.quantize",
        description=sys.modules[__package__].__doc__.split("\n")[0],
    )
    ap.add_argument("--checkpoint", required=True, help="float checkpoint (model.train)")
    ap.add_argument("--out", required=True, help="export file to write (.npz)")
    ap.add_argument("--arith", choices=("bm", "mac"), required=True)
    ap.add_argument("--preset", default=None,
                    help="params preset (default: bm8f6, the shipped one; mac8)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument(
        "--calib-images", type=int, default=5000, help="training images to calibrate on"
    )
    ap.add_argument(
        "--val-images",
        type=int,
        default=5000,
        help="held-out training images that decide whether QAT is needed",
    )
    ap.add_argument(
        "--percentiles",
        default="99.9,99.99,100",
        help="activation clip percentiles tried; the best on the held-out images wins",
    )
    ap.add_argument("--qat-threshold", type=float, default=0.1, help="pp of loss that triggers QAT")
    ap.add_argument("--qat-epochs", type=float, default=1.0)
    ap.add_argument("--qat-lr", type=float, default=1e-4)
    ap.add_argument("--qat-time-limit", type=float, default=None, help="seconds")
    ap.add_argument("--no-qat", action="store_true")
    ap.add_argument("--test", action="store_true", help="also report the full test set")
    ap.add_argument("--test-limit", type=int, default=0, help="with --test: first N images only")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def _record_test(exp, stages, x_te, y_te) -> None:
    """The float and integer test accuracies and their top-1 agreement, into the export."""
    f_pred = float_logits(stages, x_te).argmax(1)
    i_pred = int_logits(exp, x_te).argmax(1)
    exp.metadata["test"] = {
        "float_accuracy": float((f_pred == y_te).mean()),
        "int_accuracy": float((i_pred == y_te).mean()),
        "agreement": float((f_pred == i_pred).mean()),
        "images": int(len(y_te)),
    }
    exp.aux["float_test_pred"] = f_pred.astype(np.uint8)
    print("test", json.dumps(exp.metadata["test"]))


def _checkpoint_net(argv) -> str | None:
    """The ``net_config`` name of ``--checkpoint`` (``None`` if it cannot be read here: the
    LeNet path then reports why)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--checkpoint")
    ck = pre.parse_known_args(argv)[0].checkpoint
    if not ck or not Path(ck).is_file():
        return None
    try:
        d = torch.load(ck, weights_only=False, map_location="cpu")
    except Exception:
        return None
    cfg = d.get("net_config") if isinstance(d, dict) else None
    return cfg.get("name") if isinstance(cfg, dict) else None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if _checkpoint_net(argv) == "resnet22":
        from . import resnet

        return resnet.main(argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from ..data import load_mnist

    preset = args.preset or ("bm8f6" if args.arith == "bm" else "mac8")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    p = PRESETS[preset]
    if (args.arith == "bm") != isinstance(p, BMParams):
        raise ValueError(f"preset {preset!r} is not a {args.arith} preset")
    net = load_float_net(args.checkpoint).eval()
    for q in net.parameters():
        q.requires_grad_(False)
    stages = stages_of(net)
    x_tr, y_tr, x_te, y_te = load_mnist(args.data_dir)
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(len(x_tr))
    cal = x_tr[perm[: args.calib_images]]
    val_idx = perm[args.calib_images : args.calib_images + args.val_images]
    x_val, y_val = x_tr[val_idx], y_tr[val_idx]
    check_stages(net, stages, to_float_input(x_val[:64]))
    pixel_shift = max(0, 8 - p.a_bits)

    def evaluate(exp, xs, ys):
        f_pred = float_logits(stages, xs).argmax(1)
        i_pred = int_logits(exp, xs).argmax(1)
        return (
            float((f_pred == ys).mean()),
            float((i_pred == ys).mean()),
            float((i_pred == f_pred).mean()),
        )

    ck = Path(args.checkpoint).resolve()
    root = Path(__file__).resolve().parent.parent
    ck_name = str(ck.relative_to(root)) if ck.is_relative_to(root) else str(ck)
    meta = {
        "checkpoint": ck_name,
        "arith": args.arith,
        "seed": args.seed,
        "command": "python -m model.quantize " + " ".join(argv),
    }
    best = None
    for pct in (float(v) for v in args.percentiles.split(",")):
        exp = quantize(
            stages, cal, p, preset=preset, pct=pct, pixel_shift=pixel_shift, metadata=meta
        )
        fa, ia, ag = evaluate(exp, x_val, y_val)
        print(f"pct {pct}: held-out float {fa:.4f} integer {ia:.4f} agreement {ag:.4f}")
        if best is None or ia > best[1]:
            best = (pct, ia, fa, exp)
    pct, ia, fa, exp = best
    if args.arith == "bm" and not args.no_qat and (fa - ia) * 100 > args.qat_threshold:
        print(f"PTQ loses {(fa - ia) * 100:.2f} pp > {args.qat_threshold}: QAT fine-tuning")
        for q in net.parameters():
            q.requires_grad_(True)
        for st in stages:
            if hasattr(st.module, "dw"):
                st.module.dx.requires_grad_(False)
        net.train()
        qat_finetune(
            stages,
            exp.layers,
            exp.metadata["layer_scales"],
            p,
            x_tr[perm[args.calib_images + args.val_images :]],
            y_tr[perm[args.calib_images + args.val_images :]],
            epochs=args.qat_epochs,
            lr=args.qat_lr,
            seed=args.seed,
            time_limit=args.qat_time_limit,
        )
        net.eval()
        # the fine-tuned float model is the export's float reference from now on
        from ..train import net_to_dict

        qat_ck = Path(args.out).with_suffix(".qat.pt")
        torch.save(net_to_dict(net), qat_ck)
        qat_ck = qat_ck.resolve()
        meta["checkpoint"] = (
            str(qat_ck.relative_to(root)) if qat_ck.is_relative_to(root) else (str(qat_ck))
        )
        meta["qat"] = {"epochs": args.qat_epochs, "lr": args.qat_lr, "from": ck_name}
        exp = quantize(
            stages, cal, p, preset=preset, pct=pct, pixel_shift=pixel_shift, metadata=meta
        )
        fa, ia, ag = evaluate(exp, x_val, y_val)
        print(f"after QAT: held-out float {fa:.4f} integer {ia:.4f} agreement {ag:.4f}")
    exp.metadata["heldout"] = {"float_accuracy": fa, "int_accuracy": ia, "images": len(x_val)}
    if args.test:
        n = args.test_limit or len(x_te)
        _record_test(exp, stages, x_te[:n], y_te[:n])
    written = save_export(args.out, exp)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size} bytes, sha256 {written.checksum})")
    return 0
