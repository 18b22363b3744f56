"""Accuracy of an exported network on the MNIST test set.

``python -m model.evaluate --weights F --data-dir D --engine reference|float``

- ``reference``: the bit-exact integer model (:func:`model.reference.ref_network_batch`, NumPy
  only; proved equal to the per-image :func:`model.reference.ref_network` by the tests).
- ``float``: the float network the export was quantized from (``--checkpoint``, default the
  ``checkpoint`` recorded in the export's metadata; needs torch).

Both print top-1 agreement with the float model when its predictions are known: from the
export's ``aux.float_test_pred`` (written by :mod:`model.quantize` for the full test set) or by
running the checkpoint. The last line is always ``accuracy <fraction> (<correct>/<total>)``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .cli import run
from .data import DatasetError, load_mnist_split
from .export import NetworkExport, load_export
from .reference import ref_network_batch

__all__ = ["reference_predict", "float_predict", "parse_args", "main"]


def reference_predict(exp: NetworkExport, images, *, batch: int = 500, log=None) -> np.ndarray:
    """Predicted classes (first maximal logit) of uint8 images through the integer reference."""
    codes = exp.codes(images)
    out = []
    t0 = time.time()
    for i in range(0, len(codes), batch):
        logits = ref_network_batch(exp.params, exp.layers, exp.tensors, codes[i : i + batch])
        out.append(np.argmax(logits, axis=1))
        if log is not None:
            done = min(i + batch, len(codes))
            log(f"reference: {done}/{len(codes)} images, {time.time() - t0:.0f} s")
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def float_predict(checkpoint, images, *, batch: int = 500, threads: int = 1) -> np.ndarray:
    """Predicted classes of the float checkpoint (torch)."""
    import torch

    from .quantize import float_logits, load_float_net, stages_of

    torch.set_num_threads(threads)
    net = load_float_net(checkpoint).eval()
    return float_logits(stages_of(net), images, batch=batch).argmax(1)


def _checkpoint_of(args, exp: NetworkExport) -> Path | None:
    ck = args.checkpoint or exp.metadata.get("checkpoint")
    if ck is None:
        return None
    ck = Path(ck)
    if not ck.is_absolute() and not ck.exists():
        ck = Path(__file__).resolve().parent.parent / ck
    return ck


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m model.evaluate", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--weights", required=True, help="export file (.npz) from model.quantize")
    ap.add_argument(
        "--data-dir", default=None, help="MNIST folder (default: BM_DATA_DIR / dev copy)"
    )
    ap.add_argument("--engine", choices=("reference", "float"), default="reference")
    ap.add_argument("--checkpoint", default=None, help="float model (default: from the export)")
    ap.add_argument("--limit", type=int, default=0, help="first N test images (0: all)")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    return run("model.evaluate", lambda a: _main(parse_args(a)), argv)


def _main(args) -> int:
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    exp = load_export(args.weights)
    x_te, y_te = load_mnist_split(args.data_dir, "test")
    if tuple(x_te.shape[1:]) != tuple(exp.input_shape[-2:]):
        raise DatasetError(
            f"test images are {x_te.shape[1]}x{x_te.shape[2]}, the export reads "
            f"{exp.input_shape[-2]}x{exp.input_shape[-1]}"
        )
    n = len(y_te) if args.limit <= 0 else min(args.limit, len(y_te))
    x_te, y_te = x_te[:n], y_te[:n].astype(np.int64)
    print(
        f"export {args.weights}: {exp.arith} preset {exp.preset!r}, {len(exp.layers)} layers, "
        f"sha256 {exp.checksum[:16]}"
    )
    ck = _checkpoint_of(args, exp)
    float_pred = None
    if "float_test_pred" in exp.aux and len(exp.aux["float_test_pred"]) >= n:
        float_pred = np.asarray(exp.aux["float_test_pred"][:n], dtype=np.int64)
    t0 = time.time()
    if args.engine == "reference":
        pred = reference_predict(exp, x_te, batch=args.batch, log=log)
    else:
        if ck is None or not ck.exists():
            raise SystemExit(f"--engine float needs the checkpoint; {ck} not found (--checkpoint)")
        pred = float_predict(ck, x_te, batch=args.batch, threads=args.threads)
        float_pred = pred
    wall = time.time() - t0
    if float_pred is None and ck is not None and ck.exists():
        try:
            float_pred = float_predict(ck, x_te, batch=args.batch, threads=args.threads)
        except ImportError:  # no torch: agreement unknown
            float_pred = None
    correct = int((pred == y_te).sum())
    print(f"engine {args.engine}: {n} images in {wall:.1f} s")
    meta_test = exp.metadata.get("test", {})
    if "float_accuracy" in meta_test:
        print(f"float model accuracy (recorded at quantization) {meta_test['float_accuracy']:.4f}")
    if float_pred is not None:
        agree = int((pred == float_pred).sum())
        print(
            f"float accuracy {float((float_pred == y_te).mean()):.4f}; "
            f"top-1 agreement with float {agree / n:.4f} ({agree}/{n})"
        )
    else:
        print("top-1 agreement with float: unknown (no float predictions or checkpoint)")
    print(f"accuracy {correct / n:.4f} ({correct}/{n})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
