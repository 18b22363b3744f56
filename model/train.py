"""One training run: ``python -m model.train --method METHOD --out runs/NAME [options]``.

Methods (METHOD.md section 3; ``--form`` picks the BM neuron, ``--op`` the max approximation):

- ``classical``: train the classical network (the teacher of the other methods).
- ``direct``: train the BM network from scratch by backprop.
- ``layerwise``: Algorithm 1. From a trained classical net, convert each layer in order and
  fine-tune the whole network after each conversion.
- ``layerwise_freeze``: as ``layerwise``, but a converted and fine-tuned layer is frozen.
- ``kd``: knowledge distillation (section 4.1), the all-BM student converted from the teacher,
  ``L = beta * sum_l MSE(y_s^l, y_t^l) + w * (CE(y_s, y_t) + CE(y_s, y))``.
- ``lwkd``: layer-wise KD for BM (section 4.2, Fig. 1). Layer k is converted and trained with
  layers < k frozen, its output fed into the teacher's layers > k (fine-tuned too) giving
  ``output_1``; the teacher alone gives ``output_2``;
  ``L = beta * MSE(student_k, teacher_k) + w * (CE(output_1, y) + CE(output_2, y))``.
- ``finetune``: start from ``--init`` (e.g. a layer-wise KD snapshot ``after_layer4.pt``), convert
  its remaining classical layers (the classifier with LSE from alpha = 1 when ``--last-op lse``,
  annealed to ``--last-alpha-end``, hard max for the last ``--last-max-epochs``; ``--last-form bm4``
  makes it a 4-branch neuron, whose negative branch can inhibit), and train the
  whole student end to end with KD (``--beta`` weighs the per-layer MSE terms).
- ``two_stage``: section 4.4. Run ``--first-method`` (kd or lwkd) with LSE, replace LSE by the
  hard max keeping the weights (measured: "LSE-MAX"), and fine-tune with KD ("MAX").

``--learn-alpha`` makes alpha a trainable scalar per layer for ``--alpha-epochs`` epochs, after
which it is frozen (section 4.3). Every run writes ``config.json`` (the resolved configuration),
``ckpt.pt`` (resumable: rerunning the same command continues), ``model.pt`` (state_dict, net
configuration and result) and ``result.json`` into ``--out``.

Pixels are scaled as ``x = pixel / 256``, so the integer input scale is ``2**-8``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import pickle
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cli import CheckpointError
from .layers import BM15Layer, BMLayer
from .maxops import MaxOp
from .nets import LeNet
from .registry import NET_CONFIGS, create_net

__all__ = ["TrainConfig", "parse_args", "main", "load_model", "evaluate", "METHODS"]

CORR_MIN = 2.0**-10  # smallest corr_x the refit chooses

METHODS = (
    "classical",
    "direct",
    "layerwise",
    "layerwise_freeze",
    "kd",
    "lwkd",
    "two_stage",
    "finetune",
)


@dataclass
class TrainConfig:
    method: str = "classical"
    out: str = "runs/lenet_classical"
    net: str = "lenet"
    form: str = "bm15"
    op: str = "max"
    alpha: float = 1.0
    alpha_end: float | None = None  # anneal alpha linearly to this over each training phase
    learn_alpha: bool = False
    alpha_epochs: int = 0  # epochs with learnable alpha before freezing (0: whole run)
    dx: float = 0.0
    learn_corr: bool = False
    snap_corr: bool = True  # round corr_x to a power of two (before training when refitting)
    refit: bool = True  # least-squares refit of per-channel gain/bias and corr_x on conversion
    refit_images: int = 2000
    teacher: str | None = None  # model.pt of a classical run (all methods but classical/direct)
    init: str | None = None  # finetune: the model to start from (model.pt or after_layerK.pt)
    keep: tuple[int, ...] = ()  # layers left classical (e.g. 5: the classifier)
    train_layers: tuple[int, ...] = ()  # finetune: only these layers train (empty: all)
    last_form: str | None = None  # finetune: neuron of the classifier (default: --form)
    head_init: str = "convert"  # finetune: classifier init, "convert" or "channel" (see below)
    first_method: str = "lwkd"  # two_stage: the LSE stage
    epochs: int = 5  # classical, direct, kd; per conversion step for layerwise methods
    layer_epochs: tuple[int, ...] = (2,)  # lwkd: per layer (last value repeats)
    final_epochs: int = 0  # lwkd / two_stage: joint KD fine-tune of the whole student at the end
    last_joint: int = 0  # lwkd: also train the previous student layer in the classifier stage
    last_op: str | None = None  # lwkd: op of the classifier stage ("lse": annealed, then max)
    last_alpha_end: float = 64.0
    last_max_epochs: int = 2  # lwkd with last_op="lse": final epochs with the hard max
    lr: float = 1e-3
    tail_lr: float = 3e-4
    final_lr: float = 2e-4
    batch_size: int = 128
    beta: float = 1.0  # weight of the MSE terms
    ce_weight: float = 1.0  # weight of the CE terms
    last_beta: float = 0.0  # lwkd: weight of the logit MSE in the classifier stage
    seed: int = 0
    threads: int = 1
    device: str = "cpu"  # torch device of the whole run ("cuda" on a GPU machine)
    data_dir: str | None = None
    train_limit: int = 0  # 0: whole training set
    test_limit: int = 0  # 0: whole test set
    cache_limit_gb: float = 3.0
    augment: bool = False  # random shifts (up to shift_px) and rotations (up to rot_deg)
    shift_px: float = 2.0
    rot_deg: float = 10.0
    label_smoothing: float = 0.0  # of the cross-entropy against the labels
    kd_temp: float = 0.0  # layerwise: > 0 adds logit KD at this temperature; kd: the soft term's
    kd_weight: float = 1.0  # weight of the logit KD term (times kd_temp**2)
    grad_alpha: float = 0.0  # > 0: hard-max layers train with the LSE's backward at this alpha
    corr_channels: bool = False  # bm15: one power-of-two correction per output channel
    kd_norm: bool = False  # kd, lwkd: each layer's MSE divided by the teacher layer's variance
    ema: float = 0.0  # > 0: evaluate and keep an exponential moving average of the weights
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {self.method!r}")
        self.layer_epochs = tuple(int(e) for e in self.layer_epochs)
        self.keep = tuple(int(i) for i in self.keep)
        self.train_layers = tuple(int(i) for i in self.train_layers)


# -- data --------------------------------------------------------------------------------------
def load_data(cfg: TrainConfig):
    from .data import default_data_dir, load_mnist

    xtr, ytr, xte, yte = load_mnist(cfg.data_dir or default_data_dir())

    def prep(x, y, limit):
        if limit:
            x, y = x[:limit], y[:limit]
        xt = torch.from_numpy(np.ascontiguousarray(x)).float().div_(256.0).unsqueeze(1)
        yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
        return xt.to(cfg.device), yt.to(cfg.device)

    return prep(xtr, ytr, cfg.train_limit) + prep(xte, yte, cfg.test_limit)


def batches(n: int, bs: int, gen: torch.Generator | None, device="cpu"):
    idx = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    idx = idx.to(device)
    for i in range(0, n, bs):
        yield idx[i : i + bs]


@torch.no_grad()
def augment_batch(x: torch.Tensor, gen: torch.Generator, shift_px: float, rot_deg: float):
    """Random rotation (uniform in +-``rot_deg``) and shift (uniform in +-``shift_px`` pixels)
    of each image of ``x`` (N, C, H, W), bilinear, zeros outside; drawn from ``gen``."""
    n, _, h, w = x.shape
    r = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(rot_deg)
    t = (torch.rand(n, 2, generator=gen) * 2 - 1) * shift_px
    cos, sin = torch.cos(r), torch.sin(r)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    theta[:, 0, 2] = t[:, 0] * 2 / w  # affine_grid works in [-1, 1] coordinates
    theta[:, 1, 2] = t[:, 1] * 2 / h
    theta = theta.to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@torch.no_grad()
@torch.no_grad()
def evaluate(fn, x: torch.Tensor, y: torch.Tensor, bs: int = 500) -> float:
    correct = 0
    for i in range(0, len(x), bs):
        correct += int((fn(x[i : i + bs]).argmax(1) == y[i : i + bs]).sum())
    return correct / len(x)


# -- logging / checkpoints --------------------------------------------------------------------
class Run:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.dir = Path(cfg.out)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()
        self.prior: list[dict] = []  # the earlier segments of a resumed run (from the checkpoint)
        (self.dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} +{time.time() - self.t0:7.0f}s] {msg}", flush=True)

    @property
    def ckpt_path(self) -> Path:
        return self.dir / "ckpt.pt"

    def load_ckpt(self):
        if self.ckpt_path.exists():
            ck = torch.load(self.ckpt_path, weights_only=False, map_location=self.cfg.device)
            self.prior = list(ck.get("segments", []))
            return ck
        return None

    def segments(self) -> list[dict]:
        """Wall time per segment of the run, this one last: ``[{device, wall_s}]``. A segment
        counts up to its last checkpoint; the work an interruption lost is not counted."""
        now = {"device": self.cfg.device, "wall_s": round(time.time() - self.t0, 1)}
        return [*self.prior, now]

    def save_ckpt(self, state: dict) -> None:
        tmp = self.ckpt_path.with_suffix(".tmp")
        torch.save({**state, "segments": self.segments()}, tmp)
        os.replace(tmp, self.ckpt_path)

    def progress(self, it, total, desc):
        if not self.cfg.progress:
            return it
        from tqdm import tqdm

        return tqdm(it, total=total, desc=desc, mininterval=20, file=sys.stderr, leave=False)


def net_to_dict(net: LeNet) -> dict:
    ops = [
        [m.op.kind, float(m.op.alpha.detach())] if isinstance(m, BMLayer) else None
        for m in net.layers
    ]
    return {"net_config": asdict(net.cfg), "layer_ops": ops, "state_dict": net.state_dict()}


def net_from_dict(d: dict, *, strict: bool = False) -> LeNet:
    """The network of :func:`net_to_dict` (a LeNet, one of its variants, or a ResNet-22)."""
    ncfg = dict(d["net_config"])
    name = ncfg.pop("name", "lenet")
    net = create_net(name if name in NET_CONFIGS or name == "resnet22" else "lenet", **ncfg)
    for m, op in zip(net.layers, d.get("layer_ops") or [None] * len(net.layers), strict=True):
        if op is not None:
            m.set_op(MaxOp(op[0], alpha=op[1]))
    for key, v in d["state_dict"].items():  # per-channel corrections (--corr-channels)
        if key.endswith(".corr_log"):
            layer = net.get_submodule(key.rsplit(".", 1)[0])
            if getattr(layer, "corr_log", None) is None:
                layer.corr_log = nn.Parameter(torch.zeros_like(v))
    net.load_state_dict(d["state_dict"], strict=strict)
    return net


def load_model(path: str | os.PathLike, device: str = "cpu") -> LeNet:
    """Load a ``model.pt`` written by this module (on ``device``)."""
    try:
        d = torch.load(path, weights_only=False, map_location="cpu")
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from None
    try:
        return net_from_dict(d).to(device)
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a model.pt of this project (missing {e})") from None


def save_model(run: Run, net: LeNet, result: dict) -> None:
    torch.save(
        {**net_to_dict(net), "train_config": asdict(run.cfg), "result": result},
        run.dir / "model.pt",
    )
    (run.dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")


# -- conversion helpers ----------------------------------------------------------------------
def make_op(cfg: TrainConfig, kind: str | None = None, alpha: float | None = None) -> MaxOp:
    return MaxOp(
        kind or cfg.op, alpha=cfg.alpha if alpha is None else alpha, learnable=cfg.learn_alpha
    )


def converted(cfg: TrainConfig, net: LeNet) -> list[int]:
    """The layers a method converts to BM: all but ``cfg.keep`` (the authors' protocol keeps
    the classifier classical, ``--keep`` its index)."""
    return [i for i in range(len(net.layers)) if i not in cfg.keep]


def convert_layer(cfg: TrainConfig, net: LeNet, i: int, src: nn.Module | None = None):
    op = make_op(cfg)
    op.grad_alpha = cfg.grad_alpha
    kw = {"op": op}
    if cfg.form == "bm15":
        kw.update(dx=cfg.dx, learn_corr=cfg.learn_corr, corr_channels=cfg.corr_channels)
    return net.convert_layer(i, cfg.form, src=src, **kw)


@torch.no_grad()
def refit_layer(
    cfg: TrainConfig, layer: nn.Module, h_in: torch.Tensor, target: torch.Tensor, log=None
) -> None:
    """Least-squares refit of a freshly converted layer to the teacher's pre-activations.

    For a 1.5-BM layer, ``target ~ g_c * E - c * S + b_c`` per output channel ``c`` with ``E`` the
    branch and ``S`` the window sum; ``c`` is shared by the layer (it becomes one shift) and, with
    ``snap_corr``, rounded to a power of two before ``g_c, b_c`` are refitted. The gain ``g_c > 0``
    multiplies the positive weights ``w + dw`` (the max is homogeneous in them), ``b_c`` becomes
    the folded bias. For a 4-BM layer only ``g_c`` and ``b_c`` are fitted.
    """
    bs = 250
    es, ss, ts = [], [], []
    for i in range(0, len(h_in), bs):
        hb = h_in[i : i + bs]
        if isinstance(layer, BM15Layer):
            if layer.kind == "linear":
                hb = hb.flatten(1)
            _, e, s = layer(hb, return_parts=True)
            s = s.expand_as(e)
        else:
            if getattr(layer, "kind", "conv") == "linear":
                hb = hb.flatten(1)
            e = layer(hb) - layer._bias_shape(layer.bias)
            s = torch.zeros_like(e)
        t = target[i : i + bs]
        if e.dim() == 4:
            e, s, t = (a.permute(0, 2, 3, 1).reshape(-1, a.shape[1]) for a in (e, s, t))
        es.append(e.double())
        ss.append(s.double())
        ts.append(t.double())
    e, s, t = torch.cat(es), torch.cat(ss), torch.cat(ts)
    if not bool(torch.isfinite(e).all() and torch.isfinite(t).all()):
        if log:
            log("  refit skipped: non-finite branch outputs or targets")
        return
    if len(e) > 400_000:
        sel = torch.randperm(len(e), generator=torch.Generator().manual_seed(0))[:400_000]
        sel = sel.to(e.device)
        e, s, t = e[sel], s[sel], t[sel]
    is15 = isinstance(layer, BM15Layer)

    def fit_gb(c):
        y = t + c * s
        em, ym = e.mean(0), y.mean(0)
        cov = ((e - em) * (y - ym)).mean(0)
        var = ((e - em) ** 2).mean(0).clamp(min=1e-12)
        g = (cov / var).clamp(min=1e-3)
        return g, ym - g * em

    c = float(layer.corr_x) if is15 else 0.0
    if is15:
        # joint least squares: project t and s off span(e_c, 1) per channel, then solve for c
        em = e.mean(0)
        ec = e - em
        var = (ec * ec).sum(0).clamp(min=1e-12)

        def resid(a):
            a = a - a.mean(0)
            return a - ec * ((ec * a).sum(0) / var)

        tr, sr = resid(t), resid(s)
        c_fit = float(-(tr * sr).sum() / (sr * sr).sum().clamp(min=1e-12))
        # the datapath can only subtract a power of two times S; a fit <= 0 means "as little
        # as possible": the floor CORR_MIN
        c = c_fit if math.isfinite(c_fit) else c
        c = max(c, CORR_MIN)
        if cfg.snap_corr:
            c = 2.0 ** round(math.log2(c))
    g, b = fit_gb(c)
    err0 = float(((t - e - (-c * s if is15 else 0)) ** 2).mean())
    err = float(((t - g * e + c * s - b) ** 2).mean())
    if is15:
        wp = layer.w_pos()
        shape = (-1,) + (1,) * (wp.dim() - 1)
        layer.weight.copy_(wp * g.float().view(shape) - layer.dw)
        layer.corr_x.fill_(c)
        layer.bias.zero_()
        layer.bias.copy_(b.float() - layer.folded_bias())
    else:
        layer.weight.mul_(g.float().view((-1,) + (1,) * (layer.weight.dim() - 1)))
        layer.bias.copy_(b.float())
    if log:
        log(
            f"  refit: corr_x={c:.4g} gain median={float(g.median()):.3g} "
            f"mse {err0:.4g} -> {err:.4g} (target var {float(t.var()):.4g})"
        )


@torch.no_grad()
def refit_to(cfg: TrainConfig, net: LeNet, i: int, ref: LeNet, x: torch.Tensor, log=None) -> None:
    """:func:`refit_layer` for layer ``i`` of ``net``: its inputs are ``net``'s own on ``x``,
    its targets the pre-activations of layer ``i`` of ``ref`` (the teacher or the tutor)."""
    refit_layer(
        cfg, net.layers[i], net.run(x, 0, i), ref.run_layer(i, ref.run(x, 0, i), pre=True), log
    )


# -- the teacher -----------------------------------------------------------------------------
def load_teacher(cfg: TrainConfig) -> LeNet:
    if not cfg.teacher:
        raise ValueError(f"method {cfg.method!r} needs --teacher (a model.pt of a classical run)")
    t = load_model(cfg.teacher, cfg.device)
    if any(f != "classical" for f in t.forms):
        raise ValueError(f"teacher {cfg.teacher} is not classical: {t.forms}")
    return t


def cosine(opt, total_steps: int, warmup: int = 0):
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total_steps))))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


# -- generic epoch-based training (classical, direct, kd, layerwise) ---------------------------
def train_epochs(
    run: Run,
    net: LeNet,
    data,
    *,
    epochs: int,
    lr: float,
    tag: str,
    loss_fn,
    params=None,
    state=None,
    start_epoch: int = 0,
    on_epoch=None,
    alpha_sched=None,
    augment: bool = False,
) -> dict:
    """Adam + cosine over ``epochs``; ``loss_fn(net, xb, yb, idx)``; evaluates after each epoch.

    ``augment``: each batch is randomly shifted and rotated (:func:`augment_batch`, the config's
    ``shift_px`` and ``rot_deg``); only for loss functions that read the images, not ``idx``.
    """
    cfg = run.cfg
    xtr, ytr, xte, yte = data
    params = [p for p in (params if params is not None else net.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    steps = epochs * math.ceil(len(xtr) / cfg.batch_size)
    sched = cosine(opt, steps)
    if state is not None:
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
    # crc32, not hash(): str hashes change from process to process, and a resumed run must
    # see the batch order of the run it continues
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + zlib.crc32(tag.encode()) % 1000)
    agen = torch.Generator().manual_seed(cfg.seed * 7919 + 1 + zlib.crc32(tag.encode()) % 1000)
    acc = None
    ema = WeightEMA(params, cfg.ema) if cfg.ema > 0 else None
    if ema is not None and state is not None and "ema" in state:
        ema.load_state_dict(state["ema"])
    for ep in range(epochs):
        # a fresh order each epoch; the epochs a resumed run skips draw theirs too
        order = list(batches(len(xtr), cfg.batch_size, gen, xtr.device))
        if ep < start_epoch:
            continue
        agen.manual_seed(cfg.seed * 7919 + 1 + ep + zlib.crc32(tag.encode()) % 1000)
        net.train()
        tot, nb = 0.0, 0
        t0 = time.time()
        for j, idx in enumerate(run.progress(order, len(order), f"{tag} ep{ep + 1}/{epochs}")):
            if alpha_sched is not None:
                alpha_sched((ep + j / len(order)) / epochs)
            xb = xtr[idx]
            if augment:
                xb = augment_batch(xb, agen, cfg.shift_px, cfg.rot_deg)
            loss = loss_fn(net, xb, ytr[idx], idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update()
            tot += float(loss.detach())
            nb += 1
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"{tag}: loss is {float(loss.detach())} at epoch {ep + 1}")
        net.eval()
        if ema is None:
            acc = evaluate(net, xte, yte)
            note = ""
        else:
            with ema.swapped():
                acc = evaluate(net, xte, yte)
            note = f" (EMA {cfg.ema:g}; raw weights {evaluate(net, xte, yte):.4f})"
        run.log(
            f"{tag} epoch {ep + 1}/{epochs}: loss {tot / max(nb, 1):.4f} test acc "
            f"{acc:.4f}{note} ({time.time() - t0:.0f}s) {alphas(net)}"
        )
        if on_epoch is not None:
            st = {"opt": opt.state_dict(), "sched": sched.state_dict()}
            if ema is not None:
                st["ema"] = ema.state_dict()
            on_epoch(ep + 1, st)
    if ema is not None:
        ema.copy_to_params()  # the averaged weights are the result
    return {"accuracy": acc}


class WeightEMA:
    """Exponential moving average of trained parameters: ``a <- d * a + (1 - d) * p`` after
    each optimiser step. :meth:`swapped` evaluates with the average in place of the weights."""

    def __init__(self, params, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), not {decay!r}")
        self.params = list(params)
        self.decay = float(decay)
        self.avg = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        for a, p in zip(self.avg, self.params, strict=True):
            a.lerp_(p.detach(), 1.0 - self.decay)

    @contextlib.contextmanager
    def swapped(self):
        saved = [p.detach().clone() for p in self.params]
        self.copy_to_params()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved, strict=True):
                    p.copy_(s)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for a, p in zip(self.avg, self.params, strict=True):
            p.copy_(a)

    def state_dict(self) -> list[torch.Tensor]:
        return [a.clone() for a in self.avg]

    def load_state_dict(self, avg: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for a, s in zip(self.avg, avg, strict=True):
                a.copy_(s)


def alphas(net: LeNet) -> str:
    vals = [f"{float(m.op.alpha.detach()):.3g}" for m in net.bm_layers() if m.op.kind != "max"]
    return f"alpha=[{', '.join(vals)}]" if vals else ""


def set_alpha(net: LeNet, alpha: float) -> None:
    for m in net.bm_layers():
        m.op.set_alpha(alpha)


def freeze_alpha(net: LeNet) -> None:
    for m in net.bm_layers():
        m.op.freeze()


def ce_loss(net, xb, yb, idx):
    return F.cross_entropy(net(xb), yb)


def ce_loss_fn(cfg: TrainConfig):
    """Cross-entropy against the labels, with the config's label smoothing."""
    if not cfg.label_smoothing:
        return ce_loss

    def f(net, xb, yb, idx):
        return F.cross_entropy(net(xb), yb, label_smoothing=cfg.label_smoothing)

    return f


def logit_kd_loss_fn(cfg: TrainConfig, teacher: LeNet):
    """``CE(y_s, y) + kd_weight * T**2 * KL(softmax(y_t / T) || softmax(y_s / T))``: the
    student's cross-entropy (with the config's label smoothing) plus logit distillation from the
    teacher at temperature ``T = kd_temp`` (Hinton et al.), on the same (augmented) batch."""
    t_ = cfg.kd_temp

    def f(net, xb, yb, idx):
        with torch.no_grad():
            tl = teacher(xb)
        sl = net(xb)
        ce = F.cross_entropy(sl, yb, label_smoothing=cfg.label_smoothing)
        return ce + cfg.kd_weight * soft_ce(sl, tl, t_)

    return f


def centred(logits: torch.Tensor) -> torch.Tensor:
    """Logits minus their mean over the classes.

    A 1.5-BM classifier's window-sum correction ``corr_x * sum x`` is the same for every class:
    it moves all logits together and changes neither the softmax nor the prediction, so logits
    are compared to the teacher's only up to such a shift.
    """
    return logits - logits.mean(1, keepdim=True)


def feature_mse(s: torch.Tensor, t: torch.Tensor, norm: bool) -> torch.Tensor:
    """``MSE(s, t)``, divided by the teacher layer's variance when ``norm`` (so that every
    layer's term is about 1 at the start, whatever its scale, and none drowns the others or the
    cross-entropy)."""
    mse = F.mse_loss(s, t)
    return mse / t.detach().var().clamp(min=1e-8) if norm else mse


def soft_ce(s_logits: torch.Tensor, t_logits: torch.Tensor, temp: float) -> torch.Tensor:
    """The student against the teacher's soft labels: ``CE(y_s, softmax(y_t))`` at ``temp`` 0,
    else Hinton's ``T**2 * KL(softmax(y_t / T) || softmax(y_s / T))``."""
    if temp <= 0:
        return F.cross_entropy(s_logits, F.softmax(t_logits, 1))
    kl = F.kl_div(F.log_softmax(s_logits / temp, 1), F.log_softmax(t_logits / temp, 1),
                  log_target=True, reduction="batchmean")
    return temp * temp * kl


def kd_loss_fn(cfg: TrainConfig, teacher: LeNet, layers: bool = True):
    """Section 4.1: ``beta * sum_l MSE(y_s^l, y_t^l) + w * (CE(y_s, y_t) + CE(y_s, y))``, with
    ``beta = cfg.beta`` and ``w = cfg.ce_weight``. ``cfg.kd_norm`` divides each layer's MSE by
    the teacher layer's variance (:func:`feature_mse`); ``cfg.kd_temp`` > 0 makes the soft term
    a distillation at that temperature (:func:`soft_ce`). The logits' MSE compares them up to a
    shift common to all classes (:func:`centred`)."""

    def f(net, xb, yb, idx):
        with torch.no_grad():
            tf = teacher.features(xb)
        sf = net.features(xb)
        mse = 0.0
        if layers:
            mse = sum(feature_mse(s, t, cfg.kd_norm) for s, t in zip(sf[:-1], tf[:-1], strict=True))
            mse = mse + feature_mse(centred(sf[-1]), centred(tf[-1]), cfg.kd_norm)
        soft = soft_ce(sf[-1], tf[-1], cfg.kd_temp)
        return cfg.beta * mse + cfg.ce_weight * (soft + F.cross_entropy(sf[-1], yb))

    return f


# -- methods -----------------------------------------------------------------------------------
def run_simple(
    run: Run, data, net: LeNet, loss_fn, *, epochs: int, tag: str, lr: float, alpha_sched=None
):
    """Train ``net`` (all parameters) for ``epochs`` with resumable per-epoch checkpoints.

    ``alpha_sched(frac)`` replaces the default alpha annealing (:func:`alpha_schedule`).
    """
    ck = run.load_ckpt()
    start, state = 0, None
    if ck is not None and ck.get("tag") == tag:
        net.load_state_dict(ck["net"])
        start, state = ck["epoch"], ck["opt_state"]
        run.log(f"resuming {tag} at epoch {start}")
    cfg = run.cfg

    def on_epoch(ep, st):
        run.save_ckpt({"tag": tag, "epoch": ep, "net": net.state_dict(), "opt_state": st})
        if cfg.learn_alpha and cfg.alpha_epochs and ep == cfg.alpha_epochs:
            freeze_alpha(net)
            run.log(f"alpha frozen: {alphas(net)}")

    if cfg.learn_alpha and cfg.alpha_epochs and start >= cfg.alpha_epochs:
        freeze_alpha(net)
    sched = alpha_sched if alpha_sched is not None else alpha_schedule(cfg, net)
    return train_epochs(
        run,
        net,
        data,
        epochs=epochs,
        lr=lr,
        tag=tag,
        loss_fn=loss_fn,
        state=state,
        start_epoch=start,
        on_epoch=on_epoch,
        alpha_sched=sched,
        augment=cfg.augment,
    )


def alpha_schedule(cfg: TrainConfig, net: LeNet, layers=None):
    if cfg.alpha_end is None or cfg.op == "max":
        return None
    mods = layers if layers is not None else net.bm_layers()

    def f(frac):
        a = cfg.alpha * (cfg.alpha_end / cfg.alpha) ** min(1.0, frac / 0.75)
        for m in mods:
            if m.op.kind != "max":
                m.op.set_alpha(a)

    return f


def method_classical(run: Run, data) -> tuple[LeNet, dict]:
    cfg = run.cfg
    net = create_net(cfg.net).to(cfg.device)
    res = run_simple(run, data, net, ce_loss_fn(cfg), epochs=cfg.epochs, tag="classical", lr=cfg.lr)
    return net, res


def method_direct(run: Run, data) -> tuple[LeNet, dict]:
    cfg = run.cfg
    net = create_net(cfg.net).to(cfg.device)
    for i in converted(cfg, net):
        convert_layer(cfg, net, i)
    res = run_simple(run, data, net, ce_loss, epochs=cfg.epochs, tag="direct", lr=cfg.lr)
    return net, res


def method_kd(run: Run, data, *, student: LeNet | None = None, tag: str = "kd"):
    cfg = run.cfg
    teacher = load_teacher(cfg)
    if student is None:
        student = copy.deepcopy(teacher)
        for i in converted(cfg, student):
            convert_layer(cfg, student, i)
        if cfg.refit:
            refit_all(run, student, teacher, data)
    res = run_simple(
        run, data, student, kd_loss_fn(cfg, teacher), epochs=cfg.epochs, tag=tag, lr=cfg.lr
    )
    return student, res


@torch.no_grad()
def refit_all(run: Run, student: LeNet, teacher: LeNet, data) -> None:
    """Refit every BM layer in order on the student's own inputs (teacher pre-activations)."""
    x = data[0][: run.cfg.refit_images]
    h = x
    for i, layer in enumerate(student.layers):
        t_pre = teacher.run_layer(i, teacher.run(x, 0, i), pre=True)
        if isinstance(layer, BMLayer):
            run.log(f"refit layer {i}")
            refit_layer(run.cfg, layer, h, t_pre, run.log)
        h = student.run_layer(i, h)


class _From(nn.Module):
    """``net`` from layer ``start`` on: its input is the cached output of the frozen layers."""

    def __init__(self, net: LeNet, start: int):
        super().__init__()
        self.net, self.start = net, start

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net.run(h, self.start)

    def bm_layers(self):
        return self.net.bm_layers()


def method_layerwise(run: Run, data, freeze: bool) -> tuple[LeNet, dict]:
    """Algorithm 1: convert layer i, fine-tune the whole net (frozen converted layers if freeze)."""
    cfg = run.cfg
    teacher = load_teacher(cfg)
    teacher.eval()
    net = copy.deepcopy(teacher)
    ck = run.load_ckpt()
    done = ck["layers_done"] if ck is not None and "layers_done" in ck else 0
    todo = [i for i in range(len(net.layers)) if i not in cfg.keep]  # layers to convert
    loss_fn = logit_kd_loss_fn(cfg, teacher) if cfg.kd_temp > 0 else ce_loss_fn(cfg)
    mid = ck.get("stage_epoch", 0) if ck is not None else 0  # epochs of stage `done` trained
    accs = ck.get("accs", []) if ck is not None else []
    for i in range(min(len(net.layers), done + (1 if mid else 0))):
        if i in todo:
            convert_layer(cfg, net, i)
    if done or mid:
        net.load_state_dict(ck["net"])
        for j in range(done):
            if freeze:
                net.layers[j].requires_grad_(False)
            if isinstance(net.layers[j], BMLayer):
                net.layers[j].op.freeze()  # a learned alpha is frozen after its stage
        run.log(
            f"resuming layerwise after {done} layers"
            + (f", {mid} epoch(s) into the next" if mid else "")
        )
    caches = (None, None)
    for i in range(done, len(net.layers)):
        if i not in todo:
            continue
        resume = i == done and mid > 0  # converted and refitted already: its state is loaded
        if not resume:
            convert_layer(cfg, net, i)
            if cfg.refit:
                refit_to(cfg, net, i, teacher, data[0][: cfg.refit_images], run.log)
        model, stage_data = net, data
        if freeze:  # layers 0..i-1 are frozen: their outputs are computed once, not each epoch
            t0 = time.time()
            caches = tuple(
                cache_inputs(net, i, x, cfg.cache_limit_gb, prev=c)
                for x, c in zip((data[0], data[2]), caches, strict=True)
            )
            if caches[0] is not None and caches[1] is not None:
                model = _From(net, i)
                stage_data = (caches[0], data[1], caches[1], data[3])
                run.log(
                    f"layer {i}: cached inputs {tuple(caches[0].shape)} ({time.time() - t0:.0f}s)"
                )
            else:
                caches = (None, None)
        acc0 = evaluate(model, stage_data[2], stage_data[3])
        run.log(f"layer {i} converted: test acc before fine-tune {acc0:.4f}")
        params = [
            p for j, m in enumerate(net.layers) if not (freeze and j < i) for p in m.parameters()
        ]

        def on_epoch(ep, st, i=i):  # a checkpoint inside the stage too (its last: below)
            if ep < cfg.epochs:
                state = {"net": net.state_dict(), "opt_state": st, "accs": accs}
                run.save_ckpt({"layers_done": i, "stage_epoch": ep, **state})

        res = train_epochs(
            run,
            model,
            stage_data,
            epochs=cfg.epochs,
            lr=cfg.lr,
            tag=f"layer{i}",
            loss_fn=loss_fn,
            params=params,
            state=ck["opt_state"] if resume else None,
            start_epoch=mid if resume else 0,
            on_epoch=on_epoch,
            alpha_sched=alpha_schedule(cfg, net, [net.layers[i]]),
            augment=cfg.augment and model is net,
        )
        if freeze:
            net.layers[i].requires_grad_(False)
        net.layers[i].op.freeze()  # a learned alpha is frozen after its stage
        accs.append(res["accuracy"])
        run.save_ckpt({"layers_done": i + 1, "net": net.state_dict(), "accs": accs})
        torch.save(net_to_dict(net), run.dir / f"after_layer{i}.pt")
    res = {"accuracy": accs[-1] if accs else None, "per_layer_accuracy": accs}
    if cfg.final_epochs and not freeze:
        res["accuracy_before_final"] = res["accuracy"]
        res.update(
            layerwise_final(run, net, data, loss_fn, ck if ck and "final_epoch" in ck else None)
        )
    return net, res


def layerwise_final(run: Run, net: LeNet, data, loss_fn, ck) -> dict:
    """``--final-epochs`` of whole-network training at ``--final-lr`` after the last conversion
    (resumable: its checkpoints carry ``layers_done`` = every layer and ``final_epoch``)."""
    cfg = run.cfg
    n = len(net.layers)
    start = ck.get("final_epoch", 0) if ck is not None else 0
    if start >= cfg.final_epochs:
        return {"accuracy": evaluate(net, data[2], data[3])}

    def on_epoch(ep, st):
        run.save_ckpt(
            {
                "layers_done": n,
                "final_epoch": ep,
                "net": net.state_dict(),
                "opt_state": st,
                "accs": ck.get("accs", []) if ck else [],
            }
        )

    return train_epochs(
        run,
        net,
        data,
        epochs=cfg.final_epochs,
        lr=cfg.final_lr,
        tag="final",
        loss_fn=loss_fn,
        state=ck["opt_state"] if ck is not None and start else None,
        start_epoch=start,
        on_epoch=on_epoch,
        augment=cfg.augment,
    )


# -- layer-wise KD (section 4.2) ----------------------------------------------------------------
@torch.no_grad()
def cache_inputs(student: LeNet, k: int, x: torch.Tensor, limit_gb: float, prev=None):
    """Outputs of the frozen student layers ``0..k-1`` on ``x``, or None if too large / k < 2.

    ``prev`` (the cached inputs of layer ``k-1``) saves recomputing layers ``0..k-2``.
    """
    if k < 2:
        return None
    shape = student.run(x[:1], 0, k).shape[1:]
    if len(x) * math.prod(shape) * 4 > limit_gb * 2**30:
        return None
    out = torch.empty((len(x),) + tuple(shape), device=x.device)
    for i in range(0, len(x), 500):
        if prev is not None:
            out[i : i + 500] = student.run_layer(k - 1, prev[i : i + 500])
        else:
            out[i : i + 500] = student.run(x[i : i + 500], 0, k)
    return out


def snapshot(run: Run, student: LeNet, tutor: LeNet, k: int, acc: float) -> None:
    """Save the student path after layer ``k`` (student layers <= k, tutor tail) as a model."""
    comp = copy.deepcopy(student)
    for i in range(k + 1, len(comp.layers)):
        comp.layers[i] = copy.deepcopy(tutor.layers[i])
    torch.save(
        {**net_to_dict(comp), "result": {"accuracy": acc, "layers_bm": k + 1}},
        run.dir / f"after_layer{k}.pt",
    )


def _lwkd_stage(
    run: Run,
    data,
    student: LeNet,
    tutor: LeNet,
    k: int,
    *,
    ep0: int,
    opt_state,
    accs: list,
    caches: tuple,
    tag: str,
) -> tuple:
    """One stage of :func:`method_lwkd`: convert and train layer ``k``; returns the input caches."""
    cfg = run.cfg
    xtr, ytr, xte, yte = data
    n = len(student.layers)
    epochs = cfg.layer_epochs[min(k, len(cfg.layer_epochs) - 1)]
    layer = student.layers[k]
    for m in student.layers:
        m.requires_grad_(False)
    tutor.requires_grad_(False)
    if ep0 == 0 or not isinstance(layer, BMLayer):
        layer = convert_layer(cfg, student, k, src=tutor.layers[k])
        if k == n - 1 and cfg.last_op:  # LSE at alpha = 1 is exact: no refit
            layer.set_op(MaxOp("lse", alpha=1.0))
        elif cfg.refit:
            refit_to(cfg, student, k, tutor, xtr[: cfg.refit_images], run.log)
    layer.requires_grad_(True)
    if isinstance(layer, BM15Layer) and not cfg.learn_corr:
        layer.corr_x.requires_grad_(False) if isinstance(layer.corr_x, nn.Parameter) else None
    tail = tutor.layers[k + 1 :]
    tail.requires_grad_(True)
    student.eval()
    tutor.eval()
    t0 = time.time()
    joint = k == n - 1 and cfg.last_joint == 1
    first = k - 1 if joint else k  # first trainable student layer
    if joint:
        student.layers[first].requires_grad_(True)
        if caches[0] is None:
            caches = (
                cache_inputs(student, first, xtr, cfg.cache_limit_gb),
                cache_inputs(student, first, xte, cfg.cache_limit_gb),
            )
        cache_tr, cache_te = caches
    else:
        cache_tr = cache_inputs(student, k, xtr, cfg.cache_limit_gb, prev=caches[0])
        cache_te = cache_inputs(student, k, xte, cfg.cache_limit_gb, prev=caches[1])
        caches = (cache_tr, cache_te)
    lse_epochs = epochs - cfg.last_max_epochs if (k == n - 1 and cfg.last_op) else 0
    if cache_tr is not None:
        run.log(
            f"layer {k}: cached student inputs {tuple(cache_tr.shape)} ({time.time() - t0:.0f}s)"
        )

    def s_in(xb, idx, cache):
        return cache[idx] if cache is not None else student.run(xb, 0, first)

    def s_out(h):
        return student.run(h, first, k + 1)

    def student_path(xb, idx=None, cache=None):
        return tutor.run(s_out(s_in(xb, idx, cache)), k + 1)

    last_stage = k == n - 1 and bool(cfg.last_op)

    def set_last_op(ep):
        if last_stage and ep < lse_epochs and layer.op.kind != "lse":
            layer.set_op(MaxOp("lse", alpha=1.0))
        elif last_stage and ep >= lse_epochs and layer.op.kind != "max":
            layer.set_op(MaxOp("max"))
            run.log(f"layer {k}: LSE -> hard max")

    def eval_path():
        fn_idx = torch.arange(len(xte), device=xte.device)
        correct = 0
        with torch.no_grad():
            for i in range(0, len(xte), 500):
                sl = fn_idx[i : i + 500]
                out = student_path(xte[sl], sl, cache_te)
                correct += int((out.argmax(1) == yte[sl]).sum())
        return correct / len(xte)

    set_last_op(ep0)
    if ep0 == 0:
        acc0 = eval_path()
        run.log(f"layer {k} ({student.forms[k]}) converted: student-path test acc {acc0:.4f}")
    trainable = [
        p for m in student.layers[first : k + 1] for p in m.parameters() if p.requires_grad
    ]
    groups = [{"params": trainable, "lr": cfg.lr}]
    tail_params = [p for p in tail.parameters()]
    if tail_params:
        groups.append({"params": tail_params, "lr": cfg.tail_lr})
    opt = torch.optim.Adam(groups)
    steps = epochs * math.ceil(len(xtr) / cfg.batch_size)
    sched = cosine(opt, steps)
    if opt_state is not None:
        opt.load_state_dict(opt_state["opt"])
        sched.load_state_dict(opt_state["sched"])
        opt_state = None
    asched = alpha_schedule(cfg, student, [layer])
    if lse_epochs:

        def asched(frac, _e=epochs, _l=lse_epochs):  # noqa: F811
            f = min(1.0, frac * _e / _l / 0.75)
            if layer.op.kind == "lse":
                layer.op.set_alpha(cfg.last_alpha_end**f)

    gen = torch.Generator().manual_seed(cfg.seed * 1000 + k)
    for ep in range(epochs):
        order = list(batches(len(xtr), cfg.batch_size, gen, xtr.device))
        if ep < ep0:
            continue
        if cfg.learn_alpha and cfg.alpha_epochs and ep >= cfg.alpha_epochs:
            layer.op.freeze()
        set_last_op(ep)
        t0 = time.time()
        tot = 0.0
        for j, idx in enumerate(run.progress(order, len(order), f"L{k} ep{ep + 1}/{epochs}")):
            if asched is not None:
                asched((ep + j / len(order)) / epochs)
            xb, yb = xtr[idx], ytr[idx]
            with torch.no_grad():
                ht = tutor.run(xb, 0, k + 1)
                hin = s_in(xb, idx, cache_tr)
            hs = s_out(hin)
            if k == n - 1:  # logits: compared up to a shift common to all classes
                loss = cfg.last_beta * F.mse_loss(centred(hs), centred(ht))
            else:
                loss = cfg.beta * feature_mse(hs, ht, cfg.kd_norm)
            out1 = tutor.run(hs, k + 1)
            out2 = tutor.run(ht, k + 1)
            loss = loss + cfg.ce_weight * (F.cross_entropy(out1, yb) + F.cross_entropy(out2, yb))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach())
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"layer {k}: loss {float(loss.detach())}")
        acc = eval_path()
        run.log(
            f"layer {k} epoch {ep + 1}/{epochs}: loss {tot / len(order):.4f} "
            f"student-path test acc {acc:.4f} ({time.time() - t0:.0f}s) "
            f"{layer.extra_repr() if isinstance(layer, BM15Layer) else ''}"
        )
        last = ep + 1 == epochs
        if last:
            accs.append(acc)
            snapshot(run, student, tutor, k, acc)
        run.save_ckpt(
            {
                "tag": tag,
                "stage": k + 1 if last else k,
                "epoch": 0 if last else ep + 1,
                "opt_state": None
                if last
                else {"opt": opt.state_dict(), "sched": sched.state_dict()},
                "accs": accs,
                "student": student.state_dict(),
                "tutor": tutor.state_dict(),
            }
        )
    student.requires_grad_(False)
    if isinstance(layer, BMLayer):
        layer.op.freeze()  # a learned alpha is frozen after its stage
    return caches


def method_lwkd(run: Run, data, teacher: LeNet | None = None, tag: str = "lwkd"):
    cfg = run.cfg
    teacher = load_teacher(cfg) if teacher is None else teacher
    tutor = copy.deepcopy(teacher)  # its tail is fine-tuned stage by stage
    student = copy.deepcopy(teacher)
    n = len(student.layers)
    ck = run.load_ckpt()
    stage, ep0, opt_state, accs = 0, 0, None, []
    if ck is not None and ck.get("tag") == tag:
        stage, ep0, opt_state, accs = ck["stage"], ck["epoch"], ck["opt_state"], ck["accs"]
        for i in range(stage + (1 if ep0 > 0 else 0)):
            if i not in cfg.keep:
                convert_layer(cfg, student, i)
        student.load_state_dict(ck["student"])
        tutor.load_state_dict(ck["tutor"])
        run.log(f"resuming {tag} at layer {stage} epoch {ep0}")
    caches = (None, None)  # inputs of the previous stage's layer, reused incrementally
    for k in range(stage, n):
        if k in cfg.keep:
            continue
        caches = _lwkd_stage(
            run,
            data,
            student,
            tutor,
            k,
            ep0=ep0,
            opt_state=opt_state,
            accs=accs,
            caches=caches,
            tag=tag,
        )
        ep0, opt_state = 0, None
    last = max(i for i in range(n) if i not in cfg.keep)
    for i in range(last + 1, n):  # kept layers after the last conversion: the tutor's tail
        student.layers[i] = copy.deepcopy(tutor.layers[i])
    student.requires_grad_(True)
    result = {"accuracy": accs[-1], "per_layer_accuracy": accs}
    run.log(f"{tag}: per-layer student-path accuracy {[round(a, 4) for a in accs]}")
    return student, result


def method_lwkd_full(run: Run, data):
    cfg = run.cfg
    student, res = method_lwkd(run, data)
    if cfg.final_epochs:
        teacher = load_teacher(cfg)
        cfg2 = replace(cfg, epochs=cfg.final_epochs)
        run.cfg = cfg2
        r2 = run_simple(
            run,
            data,
            student,
            kd_loss_fn(cfg2, teacher, layers=False),
            epochs=cfg.final_epochs,
            tag="final",
            lr=cfg.final_lr,
        )
        run.cfg = cfg
        res = {**res, "accuracy_before_final": res["accuracy"], "accuracy": r2["accuracy"]}
    return student, res


@torch.no_grad()
def channel_head_init(layer: nn.Module, channels: int) -> None:
    """Start a BM classifier as a per-class global pooling of the last feature map.

    Class ``j`` reads channel ``j`` of the flattened ``(C, H, W)`` features at every position with
    the branch weight ``w + dw = 1``, and every other feature with the floor weight: at alpha = 1
    (LSE) the logit is the channel's sum, under the hard max its maximum. A max classifier cannot
    inhibit (its correction is the same for every class), so it can only work if the
    convolutions make channel ``j`` the detector of class ``j``; this start asks end-to-end
    training for exactly that (measured: README, "Training").
    """
    out, fan = layer.weight.shape[0], layer.weight.shape[-1]
    if channels < out or fan % channels:
        raise ValueError(f"channel head init needs at least {out} feature channels, not {channels}")
    w = torch.zeros(out, channels, fan // channels)
    w[torch.arange(out), torch.arange(out)] = 1.0
    if isinstance(layer, BM15Layer):  # the branch weight is w + dw; the rest at the floor
        w = w.clamp(min=layer.w_floor) - float(layer.dw)
    # 4-branch: the positive weights as above, no negative ones
    layer.weight.copy_(w.view_as(layer.weight))
    layer.bias.zero_()


def method_finetune(run: Run, data):
    """End-to-end KD fine-tune of a whole student from ``--init`` (see the module docstring)."""
    cfg = run.cfg
    if not cfg.init:
        raise ValueError("method 'finetune' needs --init (a model.pt or after_layerK.pt)")
    teacher = load_teacher(cfg)
    student = load_model(cfg.init, cfg.device)
    n = len(student.layers)
    smooth = []
    for i, m in enumerate(student.layers):
        if isinstance(m, BMLayer) or i in cfg.keep:
            continue
        if i == n - 1 and cfg.last_form:
            layer = convert_layer(replace(cfg, form=cfg.last_form), student, i)
        else:
            layer = convert_layer(cfg, student, i)
        if i == n - 1 and cfg.head_init == "channel":
            channel_head_init(layer, student.cfg.widths[-1])
        if cfg.last_op and i == n - 1:
            layer.set_op(MaxOp(cfg.last_op, alpha=1.0))  # exact at alpha = 1: no refit
            smooth.append(layer)
        elif cfg.refit:
            refit_to(cfg, student, i, teacher, data[0][: cfg.refit_images], run.log)
    student.requires_grad_(True)
    for m in student.bm_layers():
        if isinstance(m, BM15Layer) and isinstance(m.corr_x, nn.Parameter) and not cfg.learn_corr:
            m.corr_x.requires_grad_(False)
    if cfg.train_layers:  # the rest stays as it is (e.g. a head trained on a fixed conv stack)
        for i, m in enumerate(student.layers):
            if i not in cfg.train_layers:
                m.requires_grad_(False)
    run.log(
        f"finetune from {cfg.init}: forms {student.forms}, test acc "
        f"{evaluate(student, data[2], data[3]):.4f}"
    )
    smooth_epochs = max(0, cfg.epochs - cfg.last_max_epochs) if smooth else 0

    def sched(frac):
        t = frac * cfg.epochs  # epochs done
        for m in smooth:
            if t >= smooth_epochs and m.op.kind != "max":
                m.set_op(MaxOp("max"))
                run.log(f"{cfg.last_op} -> hard max at epoch {t:.2f}")
            elif m.op.kind != "max":
                m.op.set_alpha(cfg.last_alpha_end ** min(1.0, t / max(smooth_epochs, 1) / 0.75))

    # a resumed run gets its ops back from sched at its first step (LSE and max share a state)
    res = run_simple(
        run,
        data,
        student,
        logit_kd_loss_fn(cfg, teacher)
        if cfg.kd_temp > 0
        else kd_loss_fn(cfg, teacher, layers=cfg.beta > 0),
        epochs=cfg.epochs,
        tag="finetune",
        lr=cfg.lr,
        alpha_sched=sched if smooth else None,
    )
    for m in smooth:
        m.set_op(MaxOp("max"))
    return student, {"accuracy": res["accuracy"], "init": cfg.init}


def method_two_stage(run: Run, data):
    """Section 4.4: the first method with LSE, then hard max keeping weights, then KD."""
    cfg = run.cfg
    first = replace(cfg, method=cfg.first_method, op="lse")
    run.cfg = first
    if cfg.first_method == "lwkd":
        student, r1 = method_lwkd(run, data, tag="stage1")
    else:
        student, r1 = method_kd(run, data, tag="stage1")
    freeze_alpha(student)
    for m in student.bm_layers():
        m.set_op(MaxOp("max"))
    teacher = load_teacher(cfg)
    if cfg.refit:
        refit_all(run, student, teacher, data)
    acc_lse_max = evaluate(student, data[2], data[3])
    run.log(f"LSE -> MAX without fine-tuning: test acc {acc_lse_max:.4f}")
    run.cfg = replace(cfg, op="max", learn_alpha=False)
    r2 = run_simple(
        run,
        data,
        student,
        kd_loss_fn(cfg, teacher),
        epochs=cfg.epochs,
        tag="stage2",
        lr=cfg.final_lr,
    )
    run.cfg = cfg
    return student, {
        "accuracy": r2["accuracy"],
        "accuracy_lse": r1["accuracy"],
        "accuracy_lse_max": acc_lse_max,
    }


# -- CLI ---------------------------------------------------------------------------------------
def parse_args(argv=None) -> TrainConfig:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m model.train", description=__doc__.split("\n")[0])
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
    p.add_argument("--teacher", default=None)
    p.add_argument("--init", default=None, help="finetune: the model to start from")
    p.add_argument("--keep", default="", help="comma list of layers left classical (5: the "
                   "LeNet classifier, as in the authors' protocol)")
    p.add_argument(
        "--train-layers", default="", help="finetune: comma list of the layers that train (all)"
    )
    p.add_argument(
        "--last-form",
        choices=("bm4", "bm15"),
        default=None,
        help="finetune: neuron of the classifier (default: --form)",
    )
    p.add_argument(
        "--head-init",
        choices=("convert", "channel"),
        default=d.head_init,
        help="finetune: classifier from the teacher's weights, or class j = pooled channel j",
    )
    p.add_argument("--first-method", choices=("kd", "lwkd"), default=d.first_method)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--layer-epochs", default="2", help="comma list per layer; last repeats")
    p.add_argument("--final-epochs", type=int, default=d.final_epochs)
    p.add_argument("--last-joint", type=int, choices=(0, 1), default=d.last_joint)
    p.add_argument("--last-op", choices=("lse", "smorph", "lmorph"), default=None)
    p.add_argument("--last-alpha-end", type=float, default=d.last_alpha_end)
    p.add_argument("--last-max-epochs", type=int, default=d.last_max_epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--tail-lr", type=float, default=d.tail_lr)
    p.add_argument("--final-lr", type=float, default=d.final_lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
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
        "--ema", type=float, default=d.ema, help="keep an EMA of the weights (decay, e.g. 0.999)"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false")
    a = vars(p.parse_args(argv))
    a["layer_epochs"] = tuple(int(v) for v in str(a["layer_epochs"]).split(","))
    a["keep"] = tuple(int(v) for v in str(a["keep"]).split(",") if v.strip())
    a["train_layers"] = tuple(int(v) for v in str(a["train_layers"]).split(",") if v.strip())
    return TrainConfig(**a)


def main(argv=None) -> dict:
    cfg = parse_args(argv)
    os.environ.setdefault("RAYON_NUM_THREADS", str(cfg.threads))
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    run = Run(cfg)
    run.log(f"{cfg.method}: {json.dumps(asdict(cfg))}")
    data = load_data(cfg)
    if cfg.method == "classical":
        net, res = method_classical(run, data)
    elif cfg.method == "direct":
        net, res = method_direct(run, data)
    elif cfg.method in ("layerwise", "layerwise_freeze"):
        net, res = method_layerwise(run, data, freeze=cfg.method == "layerwise_freeze")
    elif cfg.method == "kd":
        net, res = method_kd(run, data)
    elif cfg.method == "lwkd":
        net, res = method_lwkd_full(run, data)
    elif cfg.method == "finetune":
        net, res = method_finetune(run, data)
    else:
        net, res = method_two_stage(run, data)
    net.eval()
    res["accuracy"] = evaluate(net, data[2], data[3])
    segments = run.segments()
    res.update(
        method=cfg.method,
        forms=list(net.forms),
        # each BM layer's alpha as evaluated (None: the hard max)
        alphas=[None if m.op.kind == "max" else round(float(m.op.alpha.detach()), 4)
                for m in net.bm_layers()],
        wall_s=round(sum(seg["wall_s"] for seg in segments), 1),
        segments=segments,
        test_images=len(data[2]),
        command="python -m model.train " + " ".join(sys.argv[1:] if argv is None else argv),
    )
    save_model(run, net, res)
    run.log(f"done: test acc {res['accuracy']:.4f} -> {run.dir / 'model.pt'}")
    return res


if __name__ == "__main__":
    from .cli import run

    sys.exit(run("model.train", main))
