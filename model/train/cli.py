"""The command line: ``python -m model.train``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict

import numpy as np
import torch

from .config import (
    DIRECT_INITS,
    KD_LAYERS,
    METHODS,
    REFIT_GAINS,
    REFIT_TARGETS,
    STAGE2_LOSSES,
    SWITCH_REFITS,
    TrainConfig,
)
from .data import evaluate, load_data
from .loop import alpha_values
from .methods import run_method
from .run import Run, save_model

__all__ = ["parse_args", "main"]


def parse_args(argv=None) -> TrainConfig:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m model.train",
                                description=sys.modules[__package__].__doc__.split("\n")[0])
    p.add_argument("--method", choices=METHODS, default=d.method)
    p.add_argument("--out", default=d.out)
    p.add_argument("--net", default=d.net)
    p.add_argument("--form", choices=("bm4", "bm15"), default=d.form)
    p.add_argument("--op", choices=("max", "lse", "smorph", "lmorph"), default=d.op)
    p.add_argument("--alpha", type=float, default=d.alpha)
    p.add_argument("--alpha-end", type=float, default=None)
    p.add_argument("--learn-alpha", action="store_true")
    p.add_argument("--alpha-epochs", type=int, default=d.alpha_epochs)
    p.add_argument("--dx", type=float, default=d.dx)
    p.add_argument("--learn-corr", action="store_true")
    p.add_argument("--no-snap-corr", dest="snap_corr", action="store_false")
    p.add_argument("--no-refit", dest="refit", action="store_false")
    p.add_argument("--refit-images", type=int, default=d.refit_images)
    p.add_argument("--refit-gain", choices=REFIT_GAINS, default=d.refit_gain,
                   help="a channel whose least-squares gain is <= 0: clamp it to 1e-3 "
                   "(floor) or match the target's spread (spread); auto: spread only in a layer "
                   "where most channels have no positive fit")
    p.add_argument("--switch-refit", choices=SWITCH_REFITS, default=d.switch_refit,
                   help="two_stage: at the switch of the trained LSE network to the hard max, "
                   "keep the weights (none, the paper's) or refit every layer to the teacher "
                   "(teacher, the earlier all-BM cells)")
    p.add_argument("--refit-target", choices=REFIT_TARGETS, default=d.refit_target,
                   help="layerwise methods: refit a converted layer to the teacher's layer "
                   "(teacher) or to the layer it replaces, on the same inputs (self)")
    p.add_argument("--stage2-loss", choices=STAGE2_LOSSES, default=d.stage2_loss,
                   help="two_stage: the hard-max stage's loss, KD with every layer's MSE (kd) or "
                   "the labels' and the teacher's logits only (logits, as lwkd's final epochs)")
    p.add_argument("--teacher", default=None)
    p.add_argument("--init", default=None, help="finetune: the model to start from")
    p.add_argument("--direct-init", choices=DIRECT_INITS, default=d.direct_init,
                   help="direct, 4-BM: the random init converted as it is (plain), or each "
                   "layer scaled to the classical init's output spread (spread)")
    p.add_argument("--keep", default="", help="comma list of layers left classical (5: the "
                   "LeNet classifier, as in the authors' protocol)")
    p.add_argument(
        "--train-layers", default="", help="finetune: comma list of the layers that train (all)"
    )
    p.add_argument(
        "--last-form",
        choices=("bm4", "bm15"),
        default=None,
        help="neuron of the classifier (finetune) or of the last converted layer (lwkd); "
        "default: --form",
    )
    p.add_argument(
        "--head-init",
        choices=("convert", "channel"),
        default=d.head_init,
        help="finetune: classifier from the teacher's weights, or class j = pooled channel j",
    )
    _schedule_options(p, d)
    _loss_and_data_options(p, d)
    a = vars(p.parse_args(argv))
    a["layer_epochs"] = tuple(int(v) for v in str(a["layer_epochs"]).split(","))
    a["keep"] = tuple(int(v) for v in str(a["keep"]).split(",") if v.strip())
    a["train_layers"] = tuple(int(v) for v in str(a["train_layers"]).split(",") if v.strip())
    return TrainConfig(**a)


def _schedule_options(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """Epochs, stages and learning rates."""
    p.add_argument("--first-method", choices=("kd", "lwkd"), default=d.first_method)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--layer-epochs", default="2", help="comma list per layer; last repeats")
    p.add_argument("--final-epochs", type=int, default=d.final_epochs)
    p.add_argument("--stage-joint", type=int, default=d.stage_joint,
                   help="lwkd: the student layers before each stage's own that train with it")
    p.add_argument("--last-joint", type=int, default=d.last_joint,
                   help="lwkd: the student layers before the last converted one that train in "
                        "its stage (0: --stage-joint)")
    p.add_argument("--last-op", choices=("lse", "smorph", "lmorph"), default=None)
    p.add_argument("--last-alpha-end", type=float, default=d.last_alpha_end)
    p.add_argument("--last-max-epochs", type=int, default=d.last_max_epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--tail-lr", type=float, default=d.tail_lr)
    p.add_argument("--final-lr", type=float, default=d.final_lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size)


def _loss_and_data_options(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """The loss terms, the data and augmentation, the machine."""
    p.add_argument("--beta", type=float, default=d.beta)
    p.add_argument("--ce-weight", type=float, default=d.ce_weight)
    p.add_argument("--last-beta", type=float, default=d.last_beta)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--train-limit", type=int, default=0)
    p.add_argument("--test-limit", type=int, default=0)
    p.add_argument("--cache-limit-gb", type=float, default=d.cache_limit_gb)
    p.add_argument(
        "--augment", action="store_true", help="random shifts and rotations of training images"
    )
    p.add_argument("--shift-px", type=float, default=d.shift_px)
    p.add_argument("--rot-deg", type=float, default=d.rot_deg)
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument(
        "--kd-temp",
        type=float,
        default=d.kd_temp,
        help="layerwise: logit KD against the teacher at this temperature (0: off); kd, "
        "lwkd's final fine-tune: the soft term at this temperature (0: CE against the softmax)",
    )
    p.add_argument("--kd-weight", type=float, default=d.kd_weight)
    p.add_argument(
        "--grad-alpha",
        type=float,
        default=d.grad_alpha,
        help="hard max forward, the backward of LSE at this alpha (0: off)",
    )
    p.add_argument(
        "--corr-channels",
        action="store_true",
        help="bm15: the window-sum correction per output channel (a shift each)",
    )
    p.add_argument(
        "--kd-norm",
        action="store_true",
        help="kd, lwkd: divide each layer's feature MSE by the teacher layer's variance",
    )
    p.add_argument(
        "--kd-layers",
        choices=KD_LAYERS,
        default=d.kd_layers,
        help="kd: compare each layer with the teacher's after its ReLU (post) or before it "
        "(pre: a channel the ReLU silences still gets a gradient; partial: before it, but not "
        "where the student is at or below a teacher value <= 0)",
    )
    p.add_argument(
        "--ema", type=float, default=d.ema, help="keep an EMA of the weights (decay, e.g. 0.999)"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false")


def main(argv=None) -> dict:
    cfg = parse_args(argv)
    os.environ.setdefault("RAYON_NUM_THREADS", str(cfg.threads))
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    run = Run(cfg)
    run.log(f"{cfg.method}: {json.dumps(asdict(cfg))}")
    data = load_data(cfg)
    net, res = run_method(run, data)
    net.eval()
    res["accuracy"] = evaluate(net, data[2], data[3])
    segments = run.segments()
    res.update(
        method=cfg.method,
        forms=list(net.forms),
        # each BM layer's alpha as evaluated (None: the hard max)
        alphas=alpha_values(net),
        wall_s=round(sum(seg["wall_s"] for seg in segments), 1),
        segments=segments,
        test_images=len(data[2]),
        command="python -m model.train " + " ".join(sys.argv[1:] if argv is None else argv),
    )
    save_model(run, net, res)
    run.log(f"done: test acc {res['accuracy']:.4f} -> {run.dir / 'model.pt'}")
    return res
