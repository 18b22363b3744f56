"""One CIFAR-10 ResNet-22 run: ``python -m model.train_cifar --method METHOD --out DIR [options]``.

The paper's Table 3 methods on :class:`model.resnet.ResNet22` (METHOD.md sections 3 and 4), with
``--form bm15`` neurons and ``--op`` the max approximation:

- ``classical``: the teacher. SGD with Nesterov momentum, weight decay, cosine learning rate.
- ``direct``: the all-BM network trained from scratch.
- ``kd``: the teacher converted to all-BM (formula (2)) and trained with section 4.1's loss
  ``beta * mean_l MSE(y_s^l, y_t^l) + CE(y_s, softmax y_t) + CE(y_s, y)`` over every layer's
  batch-norm output ``y^l``.
- ``lwkd``: section 4.2. The 23 layers are converted one at a time in the order they run; while
  layer ``k`` trains, layers ``< k`` are frozen (their batch norms too) and the teacher's layers
  ``> k`` are fine-tuned with it, with
  ``beta * MSE(y_s^k, y_t^k) + CE(y_s, softmax y_t) + CE(y_s, y)``.
  ``--final-epochs`` adds a joint KD fine-tune of the whole student.
- ``two_stage``: section 4.4. ``--first-method`` (kd or lwkd) with LSE, then the hard max in
  place of LSE keeping the weights (reported as ``accuracy_lse_max``), then KD with the hard max
  for ``--epochs`` (``accuracy``).

LSE runs start at ``--alpha`` and anneal geometrically to ``--alpha-end`` over the first three
quarters of each training phase.

Data: CIFAR-10 from ``--data-dir`` (see :func:`model.data.load_cifar10`), pixels ``/ 256`` (no
mean subtraction: BM inputs stay non-negative), random crop with 4-pixel zero padding and
horizontal flip, done on the device. ``--subset N`` trains on a seeded random N images and
``--test-subset M`` tests on a seeded random M (the image-folder sets are sorted by class).

Speed and scale: ``--device cuda`` with ``--amp`` runs the classical layers in bfloat16 (the BM
branches stay in float32/64). Under ``torchrun --nproc_per_node N`` the run is data-parallel
(DistributedDataParallel; NCCL on GPUs, gloo on CPUs): each process takes a disjoint share of
every epoch, gradients are averaged, rank 0 writes the files. ``--budget-s`` is a wall-clock
safety net: a phase that reaches it stops early (``budget_hit`` in the result) and layer-wise KD
converts the remaining layers without training them.

Writes ``config.json``, ``train.log`` lines on stdout, ``ckpt.pt`` (resumable per epoch),
``model.pt`` and ``result.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .layers import BMLayer
from .maxops import MaxOp
from .resnet import ResNet22, ResNetConfig
from .train import net_from_dict, net_to_dict, refit_layer

__all__ = ["CifarConfig", "METHODS", "parse_args", "main", "load_resnet", "load_cifar_tensors"]

METHODS = ("classical", "direct", "kd", "lwkd", "two_stage")
LAYER_EVAL = 500  # test images behind lwkd's per-layer accuracy (the final figure uses all)


@dataclass
class CifarConfig:
    method: str = "classical"
    out: str = "runs/cifar/classical"
    form: str = "bm15"
    op: str = "max"
    alpha: float = 1.0
    alpha_end: float | None = None
    teacher: str | None = None
    first_method: str = "lwkd"
    epochs: float = 30
    layer_epochs: float = 1.0  # lwkd: per layer (fractions allowed)
    final_epochs: float = 0
    lr: float | None = None  # default: 0.1 (SGD) for classical, 1e-3 (AdamW) otherwise
    final_lr: float = 3e-4
    weight_decay: float = 5e-4
    batch_size: int = 128
    beta: float = 1.0
    stem: int = 16  # ResNet width (16 is the paper's); smaller only for tests
    subset: int = 0  # training images (0: all 50,000)
    test_subset: int = 0  # test images (0: all 10,000)
    augment: bool = True
    amp: bool = False
    budget_s: float = 0  # 0: no limit
    seed: int = 0
    threads: int = 1
    device: str = "cpu"
    data_dir: str | None = None
    progress: bool = True

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {self.method!r}")
        if self.method not in ("classical", "direct") and not self.teacher:
            raise ValueError(f"--method {self.method} needs --teacher (a classical model.pt)")

    @property
    def lr_(self) -> float:
        if self.lr is not None:
            return self.lr
        return 0.1 if self.method == "classical" else 1e-3


# -- distributed -----------------------------------------------------------------------------
class Dist:
    """Rank and world size; a single process is rank 0 of 1."""

    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.on = self.world > 1
        if self.on and not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            dist.init_process_group(backend)
        if self.on and device.startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, net: nn.Module) -> nn.Module:
        if not self.on:
            return net
        from torch.nn.parallel import DistributedDataParallel as DDP

        # lwkd freezes earlier layers and taps one layer: not every parameter gets a gradient
        return DDP(net, find_unused_parameters=True)

    def barrier(self) -> None:
        if self.on:
            dist.barrier()

    def close(self) -> None:
        # every rank reaches this point before any tears the group down: a rank that destroys its
        # gloo group while a peer still has work in flight can abort (SIGABRT, "terminate called
        # without an active exception"), which CI met once under load
        if self.on and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


# -- data ------------------------------------------------------------------------------------
def load_cifar_tensors(cfg: CifarConfig):
    """``(x_train, y_train, x_test, y_test)``: uint8 ``(N, 3, 32, 32)`` and int64 labels."""
    from .data import default_data_dir, load_cifar10

    xtr, ytr, xte, yte = load_cifar10(cfg.data_dir or default_data_dir())

    def pick(x, y, n, seed):
        if n and n < len(x):
            idx = np.random.default_rng(seed).permutation(len(x))[:n]
            x, y = x[idx], y[idx]
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        return xt.to(cfg.device), torch.from_numpy(np.asarray(y, np.int64)).to(cfg.device)

    # the test subset does not depend on --seed: every cell is scored on the same images
    return pick(xtr, ytr, cfg.subset, cfg.seed) + pick(xte, yte, cfg.test_subset, 12345)


def to_float(xb: torch.Tensor) -> torch.Tensor:
    return xb.float().div_(256.0)


def augment(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 32x32 crop of the 4-pixel zero-padded image and a random horizontal flip."""
    b = xb.shape[0]
    dev = xb.device
    xp = F.pad(xb, (4, 4, 4, 4))
    oy = torch.randint(0, 9, (b,), generator=gen).to(dev)
    ox = torch.randint(0, 9, (b,), generator=gen).to(dev)
    flip = (torch.rand(b, generator=gen) < 0.5).to(dev)
    ar = torch.arange(32, device=dev)
    rows = (oy[:, None] + ar)[:, :, None]
    cols = torch.where(flip[:, None], ox[:, None] + 31 - ar, ox[:, None] + ar)[:, None, :]
    out = xp[torch.arange(b, device=dev)[:, None, None], :, rows, cols]  # (B, 32, 32, C)
    return out.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int = 500) -> float:
    was = net.training
    net.eval()
    correct = 0
    for i in range(0, len(x), bs):
        correct += int((net(to_float(x[i : i + bs])).argmax(1) == y[i : i + bs]).sum())
    net.train(was)
    return correct / max(1, len(x))


# -- model files -----------------------------------------------------------------------------
def load_resnet(path: str | os.PathLike, device: str = "cpu") -> ResNet22:
    """Load a ResNet-22 ``model.pt`` written by this module."""
    d = torch.load(path, weights_only=False, map_location="cpu")
    if d["net_config"].get("name") != "resnet22":
        raise ValueError(f"{path}: not a ResNet-22 model file")
    return net_from_dict(d, strict=True).to(device)


# -- the run ---------------------------------------------------------------------------------
class Run:
    def __init__(self, cfg: CifarConfig, dd: Dist):
        self.cfg, self.dd = cfg, dd
        self.dir = Path(cfg.out)
        self.t0 = time.time()
        self.budget_hit = False
        if dd.main:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "config.json").write_text(
                json.dumps({**asdict(cfg), "world_size": dd.world}, indent=2) + "\n"
            )

    def log(self, msg: str) -> None:
        if self.dd.main:
            print(f"[{time.strftime('%H:%M:%S')} +{time.time() - self.t0:6.0f}s] {msg}", flush=True)

    def over_budget(self, deadline: float | None = None) -> bool:
        """Whether the run's budget (or ``deadline``) has passed; under DDP every process gets
        rank 0's answer, so that all stop at the same step."""
        b = self.cfg.budget_s
        now = time.time()
        stop = bool(b) and bool(self.sync(now - self.t0 > b))
        late = deadline is not None and bool(self.sync(now > deadline))
        if stop and not self.budget_hit:
            self.log(f"wall-clock budget of {b:.0f} s reached")
            self.budget_hit = True
        return self.budget_hit or late

    def sync(self, v: float) -> float:
        """Rank 0's value of ``v`` on every process (``v`` itself without DDP)."""
        if not self.dd.on:
            return v
        t = torch.tensor([float(v)], device=self.cfg.device)
        dist.broadcast(t, 0)
        return float(t[0])

    @property
    def ckpt_path(self) -> Path:
        return self.dir / "ckpt.pt"

    def load_ckpt(self, tag: str):
        if self.ckpt_path.exists():
            ck = torch.load(self.ckpt_path, weights_only=False, map_location=self.cfg.device)
            if ck.get("tag") == tag:
                return ck
        return None

    def save_ckpt(self, state: dict) -> None:
        if self.dd.main:
            tmp = self.ckpt_path.with_suffix(".tmp")
            torch.save(state, tmp)
            os.replace(tmp, self.ckpt_path)
        self.dd.barrier()


def make_optimizer(cfg: CifarConfig, params, lr: float, sgd: bool):
    params = [p for p in params if p.requires_grad]
    if sgd:
        return torch.optim.SGD(
            params, lr=lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def set_alpha(net: ResNet22, a: float) -> None:
    for m in net.bm_layers():
        if m.op.kind != "max":
            m.op.set_alpha(a)


def train_phase(
    run: Run,
    net: ResNet22,
    data,
    loss_fn,
    *,
    epochs: float,
    lr: float,
    tag: str,
    sgd: bool = False,
    frozen: int = 0,
    deadline: float | None = None,
    on_alpha=None,
) -> None:
    """Train ``net`` for ``epochs`` (fractions allowed) with a cosine learning rate.

    Layers ``< frozen`` and their batch norms are frozen. Resumes from ``ckpt.pt`` when its tag
    matches. LSE alphas anneal from ``cfg.alpha`` to ``cfg.alpha_end``; ``on_alpha()`` is called
    each time alpha has doubled.
    """
    cfg, dd = run.cfg, run.dd
    xtr, ytr = data[0], data[1]
    n = len(xtr)
    for i, layer in enumerate(net.layers):
        on = i >= frozen
        for p in layer.parameters():
            p.requires_grad_(on)
        if i < len(net.bns):
            for p in net.bns[i].parameters():
                p.requires_grad_(on)
    bs = cfg.batch_size
    per_rank = bs // dd.world if dd.on else bs
    steps_per_epoch = max(1, n // bs)
    total = max(1, round(epochs * steps_per_epoch))
    opt = make_optimizer(cfg, net.parameters(), lr, sgd)
    warm = min(total // 20, 200) if sgd else 0
    start = 0
    ck = run.load_ckpt(tag)
    if ck is not None:
        net.load_state_dict(ck["net"])
        opt.load_state_dict(ck["opt"])
        start = ck["step"]
        run.log(f"{tag}: resuming at step {start}/{total}")
    # with a time limit the schedule runs on whichever is further along, steps or the clock, so
    # that a phase cut short by its budget still ends its cosine and its alpha annealing
    end = run.t0 + cfg.budget_s if cfg.budget_s else None
    if deadline is not None:
        end = deadline if end is None else min(end, deadline)
    t_phase = time.time()

    def progress(step):
        if end is None:
            return min(1.0, step / total)
        p = max(step / total, (time.time() - t_phase) / max(1e-3, end - t_phase))
        return min(1.0, run.sync(p))  # the clock differs between processes

    def set_lr(step, prog):
        if step < warm:
            f = (step + 1) / warm
        else:
            w = warm / total
            f = 0.5 * (1 + math.cos(math.pi * max(0.0, prog - w) / max(1e-9, 1 - w)))
        for g in opt.param_groups:
            g["lr"] = lr * f

    model = dd.wrap(net)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + zlib.crc32(tag.encode()) % 997)
    a0, a1 = cfg.alpha, cfg.alpha_end
    lse = a1 is not None and any(m.op.kind != "max" for m in net.bm_layers())
    use_amp = cfg.amp and cfg.device.startswith("cuda")
    step = 0
    ep = 0
    a_fit = a0
    t_log = time.time()
    while step < total:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 7919 * ep))
        for s0 in range(0, steps_per_epoch * bs, bs):
            if step >= total:
                break
            if step < start:
                step += 1
                continue
            if run.over_budget(deadline if step > start else None):  # one step at least
                run.log(f"{tag}: stopped by the time budget at step {step}/{total}")
                total = step
                break
            idx = perm[s0 : s0 + bs]
            if dd.on:
                idx = idx[dd.rank * per_rank : (dd.rank + 1) * per_rank]
            idx = idx.to(xtr.device)
            xb, yb = xtr[idx], ytr[idx]
            if cfg.augment:
                xb = augment(xb, gen)
            prog = progress(step)
            set_lr(step, prog)
            if lse:
                a = a0 * (a1 / a0) ** min(1.0, prog / 0.75)
                set_alpha(net, a)
                if on_alpha is not None and a >= 2 * a_fit:  # refit each time alpha doubles
                    on_alpha()
                    a_fit = a
            net.train()
            for i in range(min(frozen, len(net.bns))):
                net.bns[i].eval()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                loss = loss_fn(model, to_float(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise FloatingPointError(f"{tag}: loss is {lv} at step {step}")
            if (cfg.progress and time.time() - t_log > 60) or step == total:
                t_log = time.time()
                run.log(f"{tag}: step {step}/{total} loss {lv:.4f}")
            if step % steps_per_epoch == 0 or step == total:
                state = {"net": net.state_dict(), "opt": opt.state_dict()}
                run.save_ckpt({"tag": tag, "step": step, **state})
        ep += 1
    if lse:
        set_alpha(net, a1)


def ce_loss(model, x, y):
    return F.cross_entropy(model(x), y)


def kd_loss(teacher: ResNet22, beta: float, layers: list[int] | None):
    """Section 4.1 (``layers=None``: every layer's tap) or 4.2 (``layers=[k]``)."""

    def f(model, x, y):
        with torch.no_grad():
            t_out, t_taps = teacher(x, taps=True)
        s_out, s_taps = model(x, taps=True)
        keys = list(t_taps) if layers is None else layers
        mse = sum(F.mse_loss(s_taps[k].float(), t_taps[k].float()) for k in keys) / len(keys)
        soft = F.cross_entropy(s_out, F.softmax(t_out.float(), 1))
        return beta * mse + soft + F.cross_entropy(s_out, y)

    return f


def load_teacher(cfg: CifarConfig) -> ResNet22:
    t = load_resnet(cfg.teacher, cfg.device).eval()
    for p in t.parameters():
        p.requires_grad_(False)
    if t.cfg.stem != cfg.stem or any(f != "classical" for f in t.forms):
        raise ValueError(f"{cfg.teacher}: the teacher must be a classical ResNet (stem {cfg.stem})")
    return t


class _Stop(Exception):
    pass


@torch.no_grad()
def layer_input(net: ResNet22, i: int, x: torch.Tensor) -> torch.Tensor:
    """The input of ``net.layers[i]`` on images ``x`` (the forward stops there)."""
    got = []

    def hook(_m, args):
        got.append(args[0])
        raise _Stop

    h = net.layers[i].register_forward_pre_hook(hook)
    try:
        net(x)
    except _Stop:
        pass
    finally:
        h.remove()
    return got[0]


@torch.no_grad()
def refit(run: Run, net: ResNet22, teacher: ResNet22, x: torch.Tensor, layers) -> None:
    """Least-squares refit (:func:`model.train.refit_layer`) of BM ``layers``, in order, to the
    teacher's conv outputs: ``corr_x`` (a power of two), a gain per output channel and the bias,
    on the student's own inputs. Without it the window-sum correction ``dw * sum x`` dominates
    every pre-activation once the max replaces the sum, and training collapses (METHOD.md 6)."""
    from types import SimpleNamespace

    was = net.training
    net.eval()
    opts = SimpleNamespace(snap_corr=True)
    for i in layers:
        if not isinstance(net.layers[i], BMLayer):
            continue
        h_in = layer_input(net, i, x)
        target = teacher.layers[i](layer_input(teacher, i, x))
        refit_layer(opts, net.layers[i], h_in, target)
    net.train(was)
    run.log(f"refit layers {list(layers)[0]}..{list(layers)[-1]} on {len(x)} images")


def calib_images(cfg: CifarConfig, data, n: int = 128) -> torch.Tensor:
    return to_float(data[0][:n])


def convert_all(cfg: CifarConfig, net: ResNet22, op: str | None = None) -> None:
    for i in range(len(net.layers)):
        convert(cfg, net, i, op)


def convert(cfg: CifarConfig, net: ResNet22, i: int, op: str | None = None) -> None:
    kind = op or cfg.op
    net.convert_layer(i, cfg.form, op=MaxOp(kind, alpha=cfg.alpha)).to(cfg.device)


def method_classical(run: Run, data):
    cfg = run.cfg
    net = ResNet22(ResNetConfig(stem=cfg.stem)).to(cfg.device)
    train_phase(run, net, data, ce_loss, epochs=cfg.epochs, lr=cfg.lr_, tag="classical", sgd=True)
    return net, {}


def method_direct(run: Run, data):
    cfg = run.cfg
    net = ResNet22(ResNetConfig(stem=cfg.stem)).to(cfg.device)
    convert_all(cfg, net)
    train_phase(run, net, data, ce_loss, epochs=cfg.epochs, lr=cfg.lr_, tag="direct")
    return net, {}


def teacher_and_student(cfg: CifarConfig) -> tuple[ResNet22, ResNet22]:
    """The frozen teacher and a trainable copy of it (still classical)."""
    teacher = load_teacher(cfg)
    net = copy.deepcopy(teacher)
    for p in net.parameters():
        p.requires_grad_(True)
    return teacher, net


def method_kd(run: Run, data, tag: str = "kd"):
    cfg = run.cfg
    teacher, net = teacher_and_student(cfg)
    convert_all(cfg, net)
    xc = calib_images(cfg, data)
    every = range(len(net.layers))

    def refit_all():
        refit(run, net, teacher, xc, every)

    if run.load_ckpt(tag) is None:
        refit_all()
    loss = kd_loss(teacher, cfg.beta, None)
    train_phase(run, net, data, loss, epochs=cfg.epochs, lr=cfg.lr_, tag=tag, on_alpha=refit_all)
    return net, {}


def method_lwkd(run: Run, data, tag: str = "lwkd"):
    cfg = run.cfg
    teacher, net = teacher_and_student(cfg)
    per_layer = []
    untrained = []
    n = len(net.layers)
    # with a budget, each layer may use its share of what is left (15 % kept for the final
    # fine-tune), so that a slow machine trains every layer a little rather than the first ones
    keep = 0.15 * cfg.budget_s if cfg.final_epochs else 0.0
    for k in range(n):
        convert(cfg, net, k)
        if run.over_budget():
            untrained.append(k)
            continue
        xc = calib_images(cfg, data)
        if run.load_ckpt(f"{tag}_layer{k}") is None:
            refit(run, net, teacher, xc, [k])
        deadline = None
        if cfg.budget_s:
            left = cfg.budget_s - (time.time() - run.t0) - keep
            deadline = time.time() + max(0.0, left) / (n - k)
        loss = kd_loss(teacher, cfg.beta, [k])
        tk = f"{tag}_layer{k}"
        train_phase(
            run,
            net,
            data,
            loss,
            epochs=cfg.layer_epochs,
            lr=cfg.lr_,
            tag=tk,
            frozen=k,
            deadline=deadline,
            on_alpha=lambda k=k, xc=xc: refit(run, net, teacher, xc, [k]),
        )
        acc = evaluate(net, data[2][:LAYER_EVAL], data[3][:LAYER_EVAL])
        per_layer.append(acc)
        run.log(f"{tag}: layer {k} ({net.forms[k]}) converted and trained, test acc {acc:.4f}")
    if cfg.final_epochs and not run.over_budget():
        loss = kd_loss(teacher, cfg.beta, None)
        train_phase(
            run, net, data, loss, epochs=cfg.final_epochs, lr=cfg.final_lr, tag=f"{tag}_final"
        )
    res = {"per_layer_accuracy": per_layer}
    if untrained:
        res["untrained_layers"] = untrained
    return net, res


def method_two_stage(run: Run, data):
    cfg = run.cfg
    run.cfg = replace(cfg, op="lse")
    if cfg.first_method == "lwkd":
        net, r1 = method_lwkd(run, data, tag="stage1")
    else:
        net, r1 = method_kd(run, data, tag="stage1")
    acc_lse = evaluate(net, data[2], data[3])
    for m in net.bm_layers():
        m.set_op(MaxOp("max"))
    acc_lse_max = evaluate(net, data[2], data[3])
    run.log(f"LSE {acc_lse:.4f}; LSE -> MAX without fine-tuning {acc_lse_max:.4f}")
    run.cfg = replace(cfg, op="max")
    teacher = load_teacher(cfg)
    if run.load_ckpt("stage2") is None:
        refit(run, net, teacher, calib_images(cfg, data), range(len(net.layers)))
    loss = kd_loss(teacher, cfg.beta, None)
    train_phase(run, net, data, loss, epochs=cfg.epochs, lr=cfg.final_lr, tag="stage2")
    run.cfg = cfg
    return net, {**r1, "accuracy_lse": acc_lse, "accuracy_lse_max": acc_lse_max}


# -- CLI -------------------------------------------------------------------------------------
def parse_args(argv=None) -> CifarConfig:
    d = CifarConfig()
    p = argparse.ArgumentParser(
        prog="python -m model.train_cifar", description=__doc__.split("\n")[0]
    )
    p.add_argument("--method", choices=METHODS, default=d.method)
    p.add_argument("--out", default=d.out)
    p.add_argument("--form", choices=("bm4", "bm15"), default=d.form)
    p.add_argument("--op", choices=("max", "lse", "smorph", "lmorph"), default=d.op)
    p.add_argument("--alpha", type=float, default=d.alpha)
    p.add_argument("--alpha-end", type=float, default=None)
    p.add_argument("--teacher", default=None)
    p.add_argument("--first-method", choices=("kd", "lwkd"), default=d.first_method)
    p.add_argument("--epochs", type=float, default=d.epochs)
    p.add_argument("--layer-epochs", type=float, default=d.layer_epochs)
    p.add_argument("--final-epochs", type=float, default=d.final_epochs)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--final-lr", type=float, default=d.final_lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--beta", type=float, default=d.beta)
    p.add_argument("--stem", type=int, default=d.stem, help="ResNet width (16: the paper's)")
    p.add_argument("--subset", type=int, default=0, help="training images (0: all)")
    p.add_argument("--test-subset", type=int, default=0, help="test images (0: all)")
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    p.add_argument("--budget-s", type=float, default=0)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--device", default=d.device)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    try:
        return CifarConfig(**vars(p.parse_args(argv)))
    except ValueError as e:
        p.error(str(e))


def main(argv=None) -> dict:
    cfg = parse_args(argv)
    os.environ.setdefault("RAYON_NUM_THREADS", str(cfg.threads))
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    dd = Dist(cfg.device)
    if dd.on and cfg.device.startswith("cuda"):
        cfg = replace(cfg, device=f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
    if cfg.batch_size % dd.world:
        raise SystemExit(f"--batch-size {cfg.batch_size} must divide by {dd.world} processes")
    run = Run(cfg, dd)
    run.log(f"{cfg.method} on {dd.world} process(es): {json.dumps(asdict(cfg))}")
    data = load_cifar_tensors(cfg)
    run.log(f"data: {len(data[0])} training, {len(data[2])} test images")
    t0 = time.time()
    method = {
        "classical": method_classical,
        "direct": method_direct,
        "kd": method_kd,
        "lwkd": method_lwkd,
        "two_stage": method_two_stage,
    }[cfg.method]
    net, res = method(run, data)
    res["accuracy"] = evaluate(net, data[2], data[3])
    res.update(
        method=cfg.method,
        forms=sorted(set(net.forms)),
        wall_s=round(time.time() - t0, 1),
        train_images=len(data[0]),
        test_images=len(data[2]),
        world_size=dd.world,
        budget_hit=run.budget_hit,
        device=cfg.device,
        data=data_label(cfg.data_dir),
        command="python -m model.train_cifar " + " ".join(sys.argv[1:] if argv is None else argv),
    )
    if dd.on:
        res["ranks_identical"] = ranks_identical(net)
    if dd.main:
        tmp = run.dir / "model.pt.tmp"
        torch.save({**net_to_dict(net), "result": res}, tmp)
        os.replace(tmp, run.dir / "model.pt")
        (run.dir / "result.json").write_text(json.dumps(res, indent=2) + "\n")
    run.log(f"done: test acc {res['accuracy']:.4f} -> {run.dir / 'model.pt'}")
    dd.close()
    return res


def ranks_identical(net: nn.Module) -> bool:
    """Whether every process ends with the same weights (what data-parallel training promises)."""
    flat = torch.cat([p.detach().float().reshape(-1).cpu() for p in net.parameters()])
    mine = torch.tensor([float(flat.sum()), float((flat * flat).sum()), float(flat.abs().max())])
    mine = mine.to(next(net.parameters()).device)
    every = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    return all(torch.equal(e, every[0]) for e in every)


def data_label(data_dir: str | None) -> str:
    """What the figures were measured on: ``"CIFAR-10"`` for the python batches, and
    ``"CIFAR-10 (JPEG q75)"`` for a JPEG image set (the lossy copy this project is tested on)."""
    import tarfile

    from .data import default_data_dir, find_dataset_dir

    folder = find_dataset_dir(data_dir or default_data_dir(), "cifar10")
    if any((c / "data_batch_1").is_file() for c in (folder / "cifar-10-batches-py", folder)):
        return "CIFAR-10"
    names: list[str] = []
    if (folder / "train").is_dir():
        names = [p.name for p in (folder / "train").rglob("*") if p.is_file()][:5]
    else:
        for t in sorted(folder.glob("*.tar*")) + sorted(folder.glob("*.tgz")):
            with tarfile.open(t) as tf:
                for m in tf:
                    if m.isfile():
                        names.append(m.name)
                    if len(names) >= 5:
                        break
            break
    if any(n.lower().endswith((".jpg", ".jpeg")) for n in names):
        return "CIFAR-10 (JPEG q75)"
    return "CIFAR-10 (image folder)"


if __name__ == "__main__":
    main()
