"""The training methods of METHOD.md section 3 (layer-wise KD in :mod:`model.train.lwkd`)."""

from __future__ import annotations

import copy
import time
from dataclasses import replace

import torch
from torch import nn

from ..layers import BM15Layer, BMLayer
from ..maxops import MaxOp
from ..nets import LeNet
from ..registry import create_net
from .convert import convert_layer, converted, load_teacher, refit_all, refit_to, scale_to_init
from .data import evaluate
from .loop import alpha_schedule, alpha_values, freeze_alpha, run_simple, train_epochs
from .losses import ce_loss, ce_loss_fn, kd_loss_fn, logit_kd_loss_fn
from .lwkd import cache_inputs, method_lwkd, method_lwkd_full
from .run import Run, load_model, net_to_dict

__all__ = ["method_classical", "method_direct", "method_kd", "method_layerwise", "layerwise_final",
           "channel_head_init", "method_finetune", "method_two_stage", "run_method"]


def method_classical(run: Run, data) -> tuple[LeNet, dict]:
    cfg = run.cfg
    net = create_net(cfg.net).to(cfg.device)
    res = run_simple(run, data, net, ce_loss_fn(cfg), epochs=cfg.epochs, tag="classical", lr=cfg.lr)
    return net, res


def method_direct(run: Run, data) -> tuple[LeNet, dict]:
    cfg = run.cfg
    net = create_net(cfg.net).to(cfg.device)
    ref = copy.deepcopy(net) if cfg.direct_init == "spread" else None
    for i in converted(cfg, net):
        convert_layer(cfg, net, i)
    if ref is not None:  # a resumed run loads its checkpoint over this
        run.log("direct init: each layer at the classical init's spread")
        scale_to_init(net, ref, data[0][:512], run.log)
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
            # "self": the layer as the earlier steps left it is the target (same inputs)
            ref = copy.deepcopy(net) if cfg.refit_target == "self" else teacher
            convert_layer(cfg, net, i)
            if cfg.refit:
                refit_to(cfg, net, i, ref, data[0][: cfg.refit_images], run.log)
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
            layerwise_final(run, net, data, loss_fn, ck if ck and "final_epoch" in ck else None,
                            accs=accs)
        )
    return net, res


def layerwise_final(run: Run, net: LeNet, data, loss_fn, ck, *, accs: list) -> dict:
    """``--final-epochs`` of whole-network training at ``--final-lr`` after the last conversion
    (resumable: its checkpoints carry ``layers_done`` = every layer, ``final_epoch`` and the
    per-stage accuracies ``accs``, so that a resumed run still reports them)."""
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
                "accs": accs,
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
    teacher = load_teacher(cfg)
    done = run.dir / "stage1.pt"  # the hard-max network after stage 1, and stage 1's figures
    if done.exists():
        d = torch.load(done, weights_only=False, map_location=cfg.device)
        student = load_model(done, cfg.device)
        r1, acc_lse_max = d["result"], d["accuracy_lse_max"]
        run.log(f"stage 1 done ({done}): LSE {r1['accuracy']:.4f}, LSE -> MAX {acc_lse_max:.4f}")
    else:
        run.cfg = replace(cfg, method=cfg.first_method, op="lse")
        if cfg.first_method == "lwkd":
            student, r1 = method_lwkd(run, data, tag="stage1")
        else:
            student, r1 = method_kd(run, data, tag="stage1")
        freeze_alpha(student)
        r1 = {**r1, "alphas_lse": alpha_values(student)}
        run.log(f"stage 1 alphas (frozen): {r1['alphas_lse']}")
        for m in student.bm_layers():
            m.set_op(MaxOp("max"))
        if cfg.refit and cfg.switch_refit == "teacher":
            refit_all(run, student, teacher, data)
        acc_lse_max = evaluate(student, data[2], data[3])
        run.log(f"LSE -> MAX without fine-tuning: test acc {acc_lse_max:.4f}")
        # a run stopped in stage 2 resumes there, not at stage 1 (their checkpoints share
        # ckpt.pt, whose tag is stage 2's by then)
        tmp = done.with_suffix(".tmp")
        torch.save({**net_to_dict(student), "result": r1, "accuracy_lse_max": acc_lse_max}, tmp)
        tmp.replace(done)
    run.cfg = replace(cfg, op="max", learn_alpha=False)
    r2 = run_simple(
        run,
        data,
        student,
        kd_loss_fn(cfg, teacher, layers=cfg.stage2_loss == "kd"),
        epochs=cfg.epochs,
        tag="stage2",
        lr=cfg.final_lr,
    )
    run.cfg = cfg
    out = {"accuracy": r2["accuracy"], "accuracy_lse": r1["accuracy"],
           "accuracy_lse_max": acc_lse_max}
    if "alphas_lse" in r1:  # stage 1's frozen alphas (a stage1.pt of an older run lacks them)
        out["alphas_lse"] = r1["alphas_lse"]
    return student, out


def run_method(run: Run, data) -> tuple[LeNet, dict]:
    """The configured method (``run.cfg.method``) on ``data``: ``(network, result)``."""
    method = run.cfg.method
    if method in ("layerwise", "layerwise_freeze"):
        return method_layerwise(run, data, freeze=method == "layerwise_freeze")
    fn = {"classical": method_classical, "direct": method_direct, "kd": method_kd,
          "lwkd": method_lwkd_full, "finetune": method_finetune,
          "two_stage": method_two_stage}[method]
    return fn(run, data)
