"""Layer-wise knowledge distillation for BM networks (section 4.2, Fig. 1)."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ..cli import CheckpointError
from ..layers import BM15Layer, BMLayer
from ..maxops import MaxOp
from ..nets import LeNet
from .convert import convert_layer, load_teacher, refit_to
from .data import batches
from .loop import alpha_schedule, fit, run_simple
from .losses import centred, feature_mse, kd_loss_fn
from .run import Run, load_model, net_to_dict

__all__ = ["cache_inputs", "snapshot", "method_lwkd", "method_lwkd_full"]


@torch.no_grad()
def cache_inputs(student: LeNet, k: int, x: torch.Tensor, limit_gb: float, prev=None, j=None):
    """Outputs of the frozen student layers ``0..k-1`` on ``x``, or None if too large / k < 2.

    ``prev`` (the cached inputs of layer ``j``, default ``k - 1``, with layers ``< j`` unchanged
    since) saves recomputing layers ``0..j-1``.
    """
    if k < 2:
        return None
    shape = student.run(x[:1], 0, k).shape[1:]
    if len(x) * math.prod(shape) * 4 > limit_gb * 2**30:
        return None
    j = k - 1 if j is None else j
    out = torch.empty((len(x),) + tuple(shape), device=x.device)
    for i in range(0, len(x), 500):
        if prev is not None:
            out[i : i + 500] = student.run(prev[i : i + 500], j, k)
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


def _last_converted(cfg, n: int) -> int:
    """The last layer the method converts (the classifier, or with ``--keep 5`` conv5): the
    ``last_*`` options act on its stage."""
    return max(i for i in range(n) if i not in cfg.keep)


def _layer_cfg(cfg, k: int, n: int):
    """The configuration converting layer ``k``: ``--last-form`` for the last converted one."""
    if cfg.last_form and k == _last_converted(cfg, n):
        return replace(cfg, form=cfg.last_form)
    return cfg


def _convert_stage_layer(run: Run, student: LeNet, tutor: LeNet, k: int, ep0: int, xtr):
    """Freeze everything, convert student layer ``k`` from the tutor's (on a fresh stage), and
    make it and the tutor's tail trainable; returns the layer and the tail."""
    cfg = run.cfg
    n = len(student.layers)
    layer = student.layers[k]
    for m in student.layers:
        m.requires_grad_(False)
    tutor.requires_grad_(False)
    if ep0 == 0 or not isinstance(layer, BMLayer):
        layer = convert_layer(_layer_cfg(cfg, k, n), student, k, src=tutor.layers[k])
        if k == _last_converted(cfg, n) and cfg.last_op:
            layer.set_op(MaxOp("lse", alpha=1.0))
        if layer.op.kind == "lse" and float(layer.op.alpha.detach()) <= 1.0:
            # the tutor's layer exactly, on the student's inputs, which the tutor's tail was
            # trained on: a refit to the tutor's targets (on the tutor's own inputs) only moves
            # it away (issue 23: it took LSE-MAX / layer-wise KD's conv5 from 0.86 to chance)
            run.log("  no refit: LSE at alpha 1 is the tutor's layer exactly")
        elif cfg.refit:
            refit_to(cfg, student, k, tutor, xtr[: cfg.refit_images], run.log)
    layer.requires_grad_(True)
    if isinstance(layer, BM15Layer) and not cfg.learn_corr:
        layer.corr_x.requires_grad_(False) if isinstance(layer.corr_x, nn.Parameter) else None
    tail = tutor.layers[k + 1 :]
    tail.requires_grad_(True)
    student.eval()
    tutor.eval()
    return layer, tail


def _stage_caches(run: Run, student: LeNet, first: int, caches, data):
    """The frozen student's outputs feeding the stage's first trainable layer ``first``:
    ``(first, train, test)``. ``caches`` is the previous stage's ``(j, train, test)``, inputs of
    layer ``j <= first`` (layers below a stage's first one never change after it)."""
    cfg, (xtr, _, xte, _) = run.cfg, data
    t0 = time.time()
    j, ctr, cte = caches
    if j is None or ctr is None or j > first:
        j, ctr, cte = None, None, None
    if j != first:
        caches = (
            first,
            cache_inputs(student, first, xtr, cfg.cache_limit_gb, prev=ctr, j=j),
            cache_inputs(student, first, xte, cfg.cache_limit_gb, prev=cte, j=j),
        )
    if caches[1] is not None:
        run.log(
            f"layer {first}: cached student inputs {tuple(caches[1].shape)} "
            f"({time.time() - t0:.0f}s)"
        )
    return caches


def _stage_optimizer(cfg, student: LeNet, first: int, k: int, tail, opt_state):
    """Adam over the stage's student layers (``lr``) and the tutor's tail (``tail_lr``),
    restored from ``opt_state`` when resuming (the cosine is :func:`fit`'s)."""
    trainable = [
        p for m in student.layers[first : k + 1] for p in m.parameters() if p.requires_grad
    ]
    groups = [{"params": trainable, "lr": cfg.lr}]
    tail_params = [p for p in tail.parameters()]
    if tail_params:
        groups.append({"params": tail_params, "lr": cfg.tail_lr})
    opt = torch.optim.Adam(groups)
    if opt_state is not None:
        opt.load_state_dict(opt_state["opt"])
    return opt


def _stage_alpha(cfg, student: LeNet, layer, epochs: int, lse_epochs: int):
    """The stage's alpha schedule: the classifier's LSE annealed to ``last_alpha_end`` over
    three quarters of its LSE epochs, else :func:`alpha_schedule`."""
    if not lse_epochs:
        return alpha_schedule(cfg, student, [layer])

    def asched(frac):
        f = min(1.0, frac * epochs / lse_epochs / 0.75)
        if layer.op.kind == "lse":
            layer.op.set_alpha(cfg.last_alpha_end**f)

    return asched


def _stage_loss(cfg, tutor: LeNet, k: int, n: int, hs, xb, yb):
    """Section 4.2's loss: the student layer against the tutor's, and cross-entropy of the
    student path and of the tutor alone."""
    with torch.no_grad():
        ht = tutor.run(xb, 0, k + 1)
    if k == n - 1:  # logits: compared up to a shift common to all classes
        loss = cfg.last_beta * F.mse_loss(centred(hs), centred(ht))
    else:
        loss = cfg.beta * feature_mse(hs, ht, cfg.kd_norm)
    out1 = tutor.run(hs, k + 1)
    out2 = tutor.run(ht, k + 1)
    return loss + cfg.ce_weight * (F.cross_entropy(out1, yb) + F.cross_entropy(out2, yb))


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
    layer, tail = _convert_stage_layer(run, student, tutor, k, ep0, xtr)
    is_last = k == _last_converted(cfg, n)
    n_joint = cfg.last_joint if is_last and cfg.last_joint else cfg.stage_joint
    first = max(0, k - n_joint)  # first trainable student layer
    for i in range(first, k):
        student.layers[i].requires_grad_(True)
    caches = _stage_caches(run, student, first, caches, data)
    _, cache_tr, cache_te = caches
    last_stage = is_last and bool(cfg.last_op)
    lse_epochs = epochs - cfg.last_max_epochs if last_stage else 0

    def s_in(xb, idx, cache):
        return cache[idx] if cache is not None else student.run(xb, 0, first)

    def student_path(xb, idx=None, cache=None):
        return tutor.run(student.run(s_in(xb, idx, cache), first, k + 1), k + 1)

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
    per_epoch = math.ceil(len(xtr) / cfg.batch_size)
    opt = _stage_optimizer(cfg, student, first, k, tail, opt_state)
    asched = _stage_alpha(cfg, student, layer, epochs, lse_epochs)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + k)
    t0 = time.time()

    def before(at):
        nonlocal t0
        if at.j == 0:
            t0 = time.time()
            if cfg.learn_alpha and cfg.alpha_epochs and at.epoch >= cfg.alpha_epochs:
                layer.op.freeze()
            set_last_op(at.epoch)
        if asched is not None:
            asched((at.epoch + at.j / at.per_epoch) / epochs)

    def loss_of(idx, at):
        xb, yb = xtr[idx], ytr[idx]
        with torch.no_grad():
            hin = s_in(xb, idx, cache_tr)
        return _stage_loss(cfg, tutor, k, n, student.run(hin, first, k + 1), xb, yb)

    def end_epoch(ep, step, mean_loss, last):
        acc = eval_path()
        op = getattr(layer, "op", None)
        smooth = op is not None and op.kind != "max"
        run.log(
            f"layer {k} epoch {ep}/{epochs}: loss {mean_loss:.4f} "
            f"student-path test acc {acc:.4f} ({time.time() - t0:.0f}s) "
            f"{layer.extra_repr() if isinstance(layer, BM15Layer) else ''}"
            + (f" alpha={float(op.alpha.detach()):.4g}" if smooth else "")
        )
        if last:
            accs.append(acc)
            snapshot(run, student, tutor, k, acc)
        run.save_ckpt({"tag": tag, "stage": k + 1 if last else k, "epoch": 0 if last else ep,
                       "opt_state": None if last else {"opt": opt.state_dict()}, "accs": accs,
                       "student": student.state_dict(), "tutor": tutor.state_dict()})

    fit(opt, lambda ep: list(batches(len(xtr), cfg.batch_size, gen, xtr.device)), loss_of,
        total=epochs * per_epoch, label=f"layer {k}", start=ep0 * per_epoch, before=before,
        end_epoch=end_epoch,
        progress_of=lambda order, ep: run.progress(order, len(order), f"L{k} ep{ep + 1}/{epochs}"))
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
                convert_layer(_layer_cfg(cfg, i, n), student, i)
        student.load_state_dict(ck["student"])
        tutor.load_state_dict(ck["tutor"])
        run.log(f"resuming {tag} at layer {stage} epoch {ep0}")
    caches = (None, None, None)  # (layer, train, test): its inputs, reused incrementally
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
    # kept layers after the last conversion: the tutor's tail
    for i in range(_last_converted(cfg, n) + 1, n):
        student.layers[i] = copy.deepcopy(tutor.layers[i])
    student.requires_grad_(True)
    result = {"accuracy": accs[-1], "per_layer_accuracy": accs}
    run.log(f"{tag}: per-layer student-path accuracy {[round(a, 4) for a in accs]}")
    return student, result


def _resume_final(run: Run):
    """The student and per-stage accuracies of a run stopped in its ``--final-epochs`` (its
    checkpoint's tag is ``final``): the stages are done, and their ``after_layer<k>.pt``
    snapshots hold the architecture and each stage's accuracy (``run_simple`` then loads the
    checkpoint's weights). ``None`` for any other checkpoint."""
    ck = run.load_ckpt()
    if ck is None or ck.get("tag") != "final":
        return None
    snaps = sorted(run.dir.glob("after_layer*.pt"), key=lambda p: int(p.stem[len("after_layer"):]))
    if not snaps:
        raise CheckpointError(f"{run.ckpt_path}: a final-epochs checkpoint without its "
                              "after_layer<k>.pt snapshots")
    accs = [torch.load(p, weights_only=False, map_location="cpu")["result"]["accuracy"]
            for p in snaps]
    student = load_model(snaps[-1], run.cfg.device)
    run.log(f"resuming after the layer-wise stages: per-layer student-path accuracy {accs}")
    return student, {"accuracy": accs[-1], "per_layer_accuracy": accs}


def method_lwkd_full(run: Run, data):
    cfg = run.cfg
    done = _resume_final(run) if cfg.final_epochs else None
    student, res = done if done is not None else method_lwkd(run, data)
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
