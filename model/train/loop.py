"""The generic epoch loop (Adam, cosine schedule, EMA, checkpoints) and the alpha schedules."""

from __future__ import annotations

import contextlib
import math
import time
import zlib

import torch

from ..nets import LeNet
from .config import TrainConfig
from .data import augment_batch, batches, evaluate
from .run import Run

__all__ = ["cosine", "train_epochs", "WeightEMA", "alphas", "set_alpha", "freeze_alpha",
           "run_simple", "alpha_schedule"]


def cosine(opt, total_steps: int, warmup: int = 0):
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total_steps))))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


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
