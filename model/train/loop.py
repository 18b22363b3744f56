"""The one training loop (:func:`fit`: steps, epochs, the learning-rate schedule, resuming,
EMA, a time budget), the LeNet's epochs on it (:func:`train_epochs`), and the alpha schedules."""

from __future__ import annotations

import contextlib
import math
import time
import zlib
from dataclasses import dataclass

import torch

from ..nets import LeNet
from .config import TrainConfig
from .data import augment_batch, batches, evaluate
from .run import Run

__all__ = ["At", "cosine_factor", "fit", "train_epochs", "WeightEMA", "alphas", "alpha_values",
           "set_alpha", "freeze_alpha",
           "run_simple", "alpha_schedule"]


@dataclass(frozen=True)
class At:
    """Where :func:`fit` is, as its hooks see it: ``step`` optimiser steps done out of ``total``,
    batch ``j`` of ``per_epoch`` in epoch ``epoch`` (from 0), and ``prog`` the fraction of the
    phase done (the steps, or the clock when ``prog_of`` says so)."""

    step: int
    total: int
    epoch: int
    j: int
    per_epoch: int
    prog: float


def cosine_factor(at: At, warmup: int = 0) -> float:
    """The learning-rate factor: a linear warm-up over ``warmup`` steps, then half a cosine from
    1 to 0 over the phase's progress (``at.prog``), or over what the warm-up leaves of it."""
    if at.step < warmup:
        return (at.step + 1) / warmup
    w = warmup / at.total
    return 0.5 * (1 + math.cos(math.pi * max(0.0, at.prog - w) / max(1e-9, 1 - w)))


def fit(
    opt: torch.optim.Optimizer,
    order_of,
    loss_of,
    *,
    total: int,
    label: str,
    start: int = 0,
    lr_factor=None,
    before=None,
    end_epoch=None,
    stop=None,
    prog_of=None,
    progress_of=None,
    ema: WeightEMA | None = None,
) -> int:
    """The one training loop (LeNet, its layer-wise stages and the CIFAR-10 ResNet): ``total``
    optimiser steps over epochs of batches, resumable at step ``start``; returns the steps done.

    - ``order_of(epoch)``: the epoch's batches (index tensors). It is called for every epoch,
      those a resumed run skips too, so that a seeded order is drawn as in the first run.
    - ``loss_of(idx, at)``: the loss of one batch (the hooks get an :class:`At`).
    - ``lr_factor(at)``: each parameter group's learning rate is its ``initial_lr`` (its ``lr``
      when the optimiser was made) times this; default :func:`cosine_factor` over the steps.
    - ``before(at)``: before each step (alpha schedules, batch-norm modes).
    - ``end_epoch(epoch, step, mean_loss, last)``: after each epoch, and after the last step
      when the phase ends inside an epoch (evaluation, logs, checkpoints).
    - ``stop(step, started)``: whether to stop before ``step`` (a time budget); ``started``
      tells whether a step has run in this call.
    - ``prog_of(step, total)``: the phase's progress (default ``step / total``).
    - ``progress_of(order, epoch)``: wraps an epoch's batches (a progress bar).
    - ``ema``: updated after each step.

    A non-finite loss raises ``FloatingPointError``.
    """
    for g in opt.param_groups:
        g.setdefault("initial_lr", g["lr"])
    step, ep = 0, 0
    while step < total:
        order = order_of(ep)
        if step + len(order) <= start:  # an epoch the resumed run has done
            step += len(order)
            ep += 1
            continue
        tot, nb = 0.0, 0
        for j, idx in enumerate(progress_of(order, ep) if progress_of else order):
            if step >= total:
                break
            if step < start:
                step += 1
                continue
            if stop is not None and stop(step, step > start):
                total = step
                break
            prog = prog_of(step, total) if prog_of else min(1.0, step / total)
            at = At(step, total, ep, j, len(order), prog)
            f = lr_factor(at) if lr_factor else cosine_factor(at)
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * f
            if before is not None:
                before(at)
            loss = loss_of(idx, at)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update()
            step += 1
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise FloatingPointError(f"{label}: loss is {lv} at step {step}")
            tot += lv
            nb += 1
        ep += 1
        if nb and end_epoch is not None:
            end_epoch(ep, step, tot / nb, step >= total)
    return step


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
    """Adam + cosine over ``epochs`` (:func:`fit`); ``loss_fn(net, xb, yb, idx)``; evaluates
    after each epoch; ``on_epoch(epoch, opt_state)`` after it.

    ``augment``: each batch is randomly shifted and rotated (:func:`augment_batch`, the config's
    ``shift_px`` and ``rot_deg``); only for loss functions that read the images, not ``idx``.
    """
    cfg = run.cfg
    xtr, ytr, xte, yte = data
    params = [p for p in (params if params is not None else net.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    per_epoch = math.ceil(len(xtr) / cfg.batch_size)
    if state is not None:
        opt.load_state_dict(state["opt"])
    # crc32, not hash(): str hashes change from process to process, and a resumed run must
    # see the batch order of the run it continues
    seed = zlib.crc32(tag.encode()) % 1000
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + seed)
    agen = torch.Generator().manual_seed(cfg.seed * 7919 + 1 + seed)
    ema = WeightEMA(params, cfg.ema) if cfg.ema > 0 else None
    if ema is not None and state is not None and "ema" in state:
        ema.load_state_dict(state["ema"])
    acc = None
    t0 = time.time()

    def order_of(ep):
        return list(batches(len(xtr), cfg.batch_size, gen, xtr.device))

    def before(at):
        nonlocal t0
        if at.j == 0:
            t0 = time.time()
            agen.manual_seed(cfg.seed * 7919 + 1 + at.epoch + seed)
        net.train()
        if alpha_sched is not None:
            alpha_sched((at.epoch + at.j / at.per_epoch) / epochs)

    def loss_of(idx, at):
        xb = xtr[idx]
        if augment:
            xb = augment_batch(xb, agen, cfg.shift_px, cfg.rot_deg)
        return loss_fn(net, xb, ytr[idx], idx)

    def end_epoch(ep, step, mean_loss, last):
        nonlocal acc
        net.eval()
        if ema is None:
            acc = evaluate(net, xte, yte)
            note = ""
        else:
            with ema.swapped():
                acc = evaluate(net, xte, yte)
            note = f" (EMA {cfg.ema:g}; raw weights {evaluate(net, xte, yte):.4f})"
        run.log(
            f"{tag} epoch {ep}/{epochs}: loss {mean_loss:.4f} test acc "
            f"{acc:.4f}{note} ({time.time() - t0:.0f}s) {alphas(net)}"
        )
        if on_epoch is not None:
            st = {"opt": opt.state_dict()}
            if ema is not None:
                st["ema"] = ema.state_dict()
            on_epoch(ep, st)

    fit(opt, order_of, loss_of, total=epochs * per_epoch, label=tag, start=start_epoch * per_epoch,
        before=before, end_epoch=end_epoch, ema=ema,
        progress_of=lambda order, ep: run.progress(order, len(order), f"{tag} ep{ep + 1}/{epochs}"))
    if ema is not None:
        ema.copy_to_params()  # the averaged weights are the result
    if acc is None:  # resumed after its last epoch: nothing trained now, measure what is there
        net.eval()
        acc = evaluate(net, xte, yte)
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


def alpha_values(net) -> list[float | None]:
    """Each BM layer's alpha as it is evaluated, rounded to 4 digits (None: the hard max)."""
    return [None if m.op.kind == "max" else round(float(m.op.alpha.detach()), 4)
            for m in net.bm_layers()]


def alphas(net: LeNet) -> str:
    vals = [f"{float(m.op.alpha.detach()):.3g}" for m in net.bm_layers() if m.op.kind != "max"]
    return f"alpha=[{', '.join(vals)}]" if vals else ""


def set_alpha(net, alpha: float) -> None:
    """Every smooth max op of ``net`` (a LeNet or a ResNet-22) to ``alpha``; the hard max has
    none."""
    for m in net.bm_layers():
        if m.op.kind != "max":
            m.op.set_alpha(alpha)


def freeze_alpha(net: LeNet) -> None:
    for m in net.bm_layers():
        m.op.freeze()


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
    return train_epochs(run, net, data, epochs=epochs, lr=lr, tag=tag, loss_fn=loss_fn,
                        state=state, start_epoch=start, on_epoch=on_epoch, alpha_sched=sched,
                        augment=cfg.augment)


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
