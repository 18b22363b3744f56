"""The CIFAR-10 training loop (:func:`train_phase`), its losses, and the conversion and refit of
ResNet-22 layers."""

from __future__ import annotations

import time
import zlib

import torch
import torch.nn.functional as F

from ..layers import BMLayer
from ..maxops import MaxOp
from ..resnet import ResNet22
from ..train import TrainConfig, refit_layer
from ..train.loop import cosine_factor, fit, set_alpha
from ..train.run import Run
from .setup import CifarConfig, augment, load_resnet, make_optimizer, to_float


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
    matches, and skips a phase it finished in an earlier segment (:func:`_phase_done`). LSE
    alphas anneal from ``cfg.alpha`` to ``cfg.alpha_end``; ``on_alpha()`` is called each time
    alpha has doubled.
    """
    if _phase_done(run, net, tag):
        return
    cfg, dd = run.cfg, run.dd
    n = len(data[0])
    _freeze_below(net, frozen)
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
    limits = [x for x in (run.t0 + cfg.budget_s if cfg.budget_s else None, deadline) if x]
    end = min(limits) if limits else None
    t_phase = time.time()

    def prog_of(step, total):
        if end is None:
            return min(1.0, step / total)
        p = max(step / total, (time.time() - t_phase) / max(1e-3, end - t_phase))
        return min(1.0, run.sync(p))  # the clock differs between processes

    model = dd.wrap(net)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + zlib.crc32(tag.encode()) % 997)
    a0, a1 = cfg.alpha, cfg.alpha_end
    lse = a1 is not None and any(m.op.kind != "max" for m in net.bm_layers())
    use_amp = cfg.amp and cfg.device.startswith("cuda")
    a_fit = a0
    t_log = time.time()

    def order_of(ep):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 7919 * ep))
        return [perm[s0 : s0 + bs] for s0 in range(0, steps_per_epoch * bs, bs)]

    def before(at):
        nonlocal a_fit
        if lse:
            a = a0 * (a1 / a0) ** min(1.0, at.prog / 0.75)
            set_alpha(net, a)
            if on_alpha is not None and a >= 2 * a_fit:  # refit each time alpha doubles
                on_alpha()
                a_fit = a
        net.train()
        for i in range(min(frozen, len(net.bns))):
            net.bns[i].eval()

    def loss_of(idx, at):
        xb, yb = _batch(run, data, idx, per_rank, gen)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            return loss_fn(model, to_float(xb), yb)

    def end_epoch(ep, step, mean_loss, last):
        nonlocal t_log
        if cfg.progress and time.time() - t_log > 60 or last:
            t_log = time.time()
            run.log(f"{tag}: step {step} loss {mean_loss:.4f} (mean of the epoch)")
        run.save_ckpt({"tag": tag, "step": step, "net": net.state_dict(), "opt": opt.state_dict()})

    def stop(step, started):
        if run.over_budget(deadline if started else None):
            run.log(f"{tag}: stopped by the time budget at step {step}/{total}")
            return True
        return False

    fit(opt, order_of, loss_of, total=total, label=tag, start=start, before=before,
        end_epoch=end_epoch, stop=stop, prog_of=prog_of,
        lr_factor=lambda at: cosine_factor(at, warm))
    if lse:
        set_alpha(net, a1)
    if not run.over_budget():  # a phase cut short by the budget is not done
        _record_phase(run, net, tag)


PHASES = "phases.pt"  # the phases a run has finished, with the network after the last one


def _phase_done(run: Run, net: ResNet22, tag: str) -> bool:
    """Whether phase ``tag`` finished in an earlier segment of this run. The run's phases come
    in a fixed order and ``ckpt.pt`` holds only the current one, so a resumed run skips each
    finished phase and takes the network as it was after the last of them (it trained them
    all again before, from the teacher's weights)."""
    d = _read_phases(run)
    if tag not in d["done"]:
        return False
    if tag == d["done"][-1]:
        net.load_state_dict(d["net"])
    run.log(f"{tag}: done in an earlier segment" + (", network restored" if tag == d["done"][-1]
                                                     else ""))
    return True


def _read_phases(run: Run) -> dict:
    path = run.dir / PHASES
    if not path.exists():
        return {"done": [], "net": None, "notes": {}}
    return torch.load(path, weights_only=False, map_location="cpu")


def _write_phases(run: Run, d: dict) -> None:
    if run.dd.main:
        path = run.dir / PHASES
        tmp = path.with_suffix(".tmp")
        torch.save(d, tmp)
        tmp.replace(path)
    run.dd.barrier()


def _record_phase(run: Run, net: ResNet22, tag: str) -> None:
    d = _read_phases(run)
    _write_phases(run, {**d, "done": [*d["done"], tag], "net": net.state_dict()})


def phase_note(run: Run, key: str, value=None):
    """A figure measured after a phase (``value`` given: record it), or the one recorded in an
    earlier segment (``None`` if none): a resumed run that skips the phase reports it."""
    d = _read_phases(run)
    if value is None:
        return d.get("notes", {}).get(key)
    _write_phases(run, {**d, "notes": {**d.get("notes", {}), key: value}})
    return value


def _freeze_below(net: ResNet22, frozen: int) -> None:
    """Layers ``< frozen`` and their batch norms stop learning; the rest learn."""
    for i, layer in enumerate(net.layers):
        on = i >= frozen
        for p in layer.parameters():
            p.requires_grad_(on)
        if i < len(net.bns):
            for p in net.bns[i].parameters():
                p.requires_grad_(on)


def _batch(run: Run, data, idx, per_rank: int, gen):
    """This process's share of one batch, augmented when the run says so."""
    dd, xtr, ytr = run.dd, data[0], data[1]
    if dd.on:
        idx = idx[dd.rank * per_rank : (dd.rank + 1) * per_rank]
    idx = idx.to(xtr.device)
    xb, yb = xtr[idx], ytr[idx]
    if run.cfg.augment:
        xb = augment(xb, gen)
    return xb, yb


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
    opts = SimpleNamespace(snap_corr=True, refit_gain=TrainConfig.refit_gain)
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
