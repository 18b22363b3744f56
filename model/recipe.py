"""The whole multiplier-free LeNet recipe in one resumable command.

``python -m model.recipe --out runs/recipe [--data-dir D] [--heads lns,bm2,bm15]``

Stages, each skipped when its result exists (rerun the same command to resume; every training
stage also resumes from its own ``ckpt.pt`` mid-stage):

1. ``teacher/``: the classical LeNet, ``--teacher-epochs`` epochs of Adam with a cosine
   schedule, random shifts (up to 2 px) and rotations (up to 10 degrees), label smoothing 0.1.
2. ``bm/``: the five convolutions converted to the 1.5-branch neuron with the hard max, one at a
   time (least-squares refit of gain, bias and the power-of-two correction on conversion).
   ``--bm-method lwkd`` (the default) is the paper's layer-wise KD (section 4.2): while
   convolution ``k`` trains (``--layer-epochs``, one entry per convolution) the converted ones
   before it are frozen (their outputs cached) and the teacher's layers after it are fine-tuned
   with it, against the teacher's output of layer ``k`` and the labels; then ``--final-epochs``
   of KD on the whole student. ``--bm-method layerwise`` is Algorithm 1 (the whole network
   trained after each conversion, ``--stage-epochs``, logit KD at temperature 4, augmented
   images). The classifier stays the float linear layer: the integer ``lns`` head computes it
   in the log domain with no multiplier. The defaults are the shipped export's recipe: every
   stage also trains the student layer before its own (``--stage-joint 1``), conv5's stage
   conv3 and conv4 too (``--last-joint 2``), no final KD epochs.
2b. ``ft/``: the converted stack fine-tuned end to end (``--ft-epochs`` from ``--ft-lr``, cosine,
   cross-entropy plus the teacher's soft cross-entropy); ``--ft-epochs 0`` skips it.
3. ``head_bm2/``, ``head_bm15/`` (when asked for in ``--heads``): the same convolutions with the
   classifier converted to the 2-branch (4-branch neuron on inputs >= 0) or 1.5-branch max
   neuron, fine-tuned end to end with KD (LSE from alpha 1 annealed, then the hard max).
4. The exports: ``lenet_bm_<head>.npz`` for each head and ``lenet_mac.npz``, the int8 MAC
   baseline of the same teacher (:mod:`model.quantize`, full test set).
5. ``summary.json``: every accuracy (float, integer, top-1 agreement) and the wall times.

Progress goes to stderr and to each stage's ``log.txt``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

__all__ = ["main", "parse_args"]


def _log(msg: str) -> None:
    print(f"[recipe {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _train(out: Path, args: list[str]) -> dict:
    """``model.train`` into ``out`` unless its ``result.json`` exists; its result."""
    from . import train

    res_path = out / "result.json"
    if res_path.exists():
        return json.loads(res_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "log.txt", "a") as fh, contextlib.redirect_stdout(_Tee(fh)):
        return train.main([*args, "--out", str(out)])


class _Tee:
    """stdout into a log file and stderr (so progress shows while the log keeps it)."""

    def __init__(self, fh):
        self.fh = fh

    def write(self, s):
        self.fh.write(s)
        self.fh.flush()
        sys.stderr.write(s)
        return len(s)

    def flush(self):
        self.fh.flush()


def _quantize(ckpt: Path, out: Path, arith: str, common: list[str]) -> dict:
    from . import quantize
    from .export import load_export

    if not out.exists():
        quantize.main(
            ["--checkpoint", str(ckpt), "--out", str(out), "--arith", arith, "--test", *common]
        )
    exp = load_export(out)
    return {"export": str(out), "head": exp.head, **exp.metadata.get("test", {})}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m model.recipe", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/recipe")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--heads", default="lns", help="comma list of lns, bm2, bm15")
    ap.add_argument("--teacher-epochs", type=int, default=30)
    ap.add_argument("--bm-method", choices=("lwkd", "layerwise"), default="lwkd",
                    help="the convolutions' conversion: layer-wise KD (default) or Algorithm 1")
    ap.add_argument("--layer-epochs", default="8,8,10,12,15",
                    help="lwkd: epochs per convolution")
    ap.add_argument("--stage-joint", type=int, default=1,
                    help="lwkd: student layers before its own that every stage also trains")
    ap.add_argument("--last-joint", type=int, default=2,
                    help="lwkd: student layers before conv5 that its stage also trains")
    ap.add_argument("--stage-epochs", type=int, default=2, help="layerwise: epochs per step")
    ap.add_argument("--final-epochs", type=int, default=0,
                    help="KD epochs of the whole student at the end of the conversion")
    ap.add_argument("--ft-epochs", type=int, default=16,
                    help="end-to-end fine-tune of the converted stack (0: none)")
    ap.add_argument("--ft-lr", type=float, default=1e-3)
    ap.add_argument("--head-epochs", type=int, default=6)
    ap.add_argument(
        "--grad-alpha",
        type=float,
        default=0.0,
        help="hard max forward, LSE backward at this alpha while training (0: off)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-limit", type=int, default=0, help="smoke runs: first N images")
    ap.add_argument("--test-limit", type=int, default=0)
    a = ap.parse_args(argv)
    heads = [h.strip() for h in a.heads.split(",") if h.strip()]
    bad = [h for h in heads if h not in ("lns", "bm2", "bm15")]
    if bad or not heads:
        ap.error(f"--heads takes lns, bm2, bm15, not {a.heads!r}")
    a.heads = heads
    return a


def _bm_args(a, kd_teacher: str) -> list[str]:
    """``model.train`` arguments of the BM convolution stage (``--bm-method``)."""
    if a.bm_method == "lwkd":  # layer-wise KD: one layer at a time against the teacher's
        return ["--method", "lwkd", "--keep", "5", "--layer-epochs", a.layer_epochs,
                "--stage-joint", str(a.stage_joint), "--last-joint", str(a.last_joint),
                "--final-epochs", str(a.final_epochs), "--cache-limit-gb", "7",
                "--teacher", kd_teacher]
    return ["--method", "layerwise", "--keep", "5", "--epochs", str(a.stage_epochs),
            "--final-epochs", str(a.final_epochs), "--lr", "1e-3", "--final-lr", "3e-4",
            "--teacher", kd_teacher, "--augment", "--kd-temp", "4",
            "--grad-alpha", str(a.grad_alpha)]


def _head_args(a, form: str, init: Path, t_ck: str) -> list[str]:
    """``model.train`` arguments of a max head's fine-tune on the ``lns`` stack."""
    return ["--method", "finetune", "--init", str(init), "--teacher", t_ck, "--last-form", form,
            "--last-op", "lse", "--epochs", str(a.head_epochs), "--last-max-epochs", "2",
            "--lr", "5e-4", "--beta", "0"]


def main(argv=None) -> int:
    a = parse_args(argv)
    out = Path(a.out)
    t0 = time.time()
    common = ["--threads", str(a.threads), "--no-progress", "--train-limit", str(a.train_limit),
              "--test-limit", str(a.test_limit)]
    if a.data_dir:
        common += ["--data-dir", a.data_dir]
    times = {}

    def stage(name, fn):
        _log(f"{name} ...")
        t = time.time()
        r = fn()
        times[name] = round(time.time() - t, 1)
        acc = r.get("accuracy", r.get("int_accuracy"))
        _log(f"{name}: done in {times[name]:.0f} s" + (f", accuracy {acc:.4f}" if acc else ""))
        return r

    teacher_args = ["--method", "classical", "--epochs", str(a.teacher_epochs), "--lr", "2e-3",
                    "--augment", "--label-smoothing", "0.1"]
    teacher = stage("teacher", lambda: _train(out / "teacher", [*teacher_args, *common]))
    t_ck = str(out / "teacher" / "model.pt")
    bm = stage("bm convolutions", lambda: _train(out / "bm", [*_bm_args(a, t_ck), *common]))
    floats = {"lns": out / "bm" / "model.pt"}
    ft = {}
    if a.ft_epochs:
        ft_args = ["--method", "finetune", "--init", str(floats["lns"]), "--teacher", t_ck,
                   "--keep", "5", "--beta", "0", "--epochs", str(a.ft_epochs),
                   "--lr", str(a.ft_lr)]
        ft = stage("fine-tune", lambda: _train(out / "ft", [*ft_args, *common]))
        floats["lns"] = out / "ft" / "model.pt"
    for head in a.heads:
        if head == "lns":
            continue
        form = "bm4" if head == "bm2" else "bm15"
        hargs = _head_args(a, form, floats["lns"], t_ck)
        stage(f"head {head}", lambda h=head, x=hargs: _train(out / f"head_{h}", [*x, *common]))
        floats[head] = out / f"head_{head}" / "model.pt"
    qcommon = ["--threads", str(a.threads)] + (["--data-dir", a.data_dir] if a.data_dir else [])
    if a.train_limit:  # a smoke run: calibrate, validate and test on a few images
        qcommon += ["--calib-images", "200", "--val-images", "200", "--test-limit",
                    str(a.test_limit), "--no-qat"]
    exports = {}
    for head in a.heads:
        exports[head] = stage(
            f"quantize {head}",
            lambda head=head: _quantize(floats[head], out / f"lenet_bm_{head}.npz", "bm", qcommon),
        )
    exports["mac"] = stage(
        "quantize mac", lambda: _quantize(Path(t_ck), out / "lenet_mac.npz", "mac", qcommon)
    )
    summary = {
        "teacher_accuracy": teacher.get("accuracy"),
        "bm_method": a.bm_method,
        "bm_float_accuracy": bm.get("accuracy"),
        "bm_per_stage_accuracy": bm.get("per_layer_accuracy"),
        "ft_float_accuracy": ft.get("accuracy"),
        "exports": exports,
        "stage_wall_s": times,
        "wall_s": round(time.time() - t0, 1),
        "command": "python -m model.recipe " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _log(f"summary -> {out / 'summary.json'}")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    from .cli import run

    sys.exit(run("model.recipe", main))
