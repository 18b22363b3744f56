"""The Table 3 methods on ResNet-22, and the command line (``python -m model.train_cifar``)."""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import asdict, replace

import torch

from ..maxops import MaxOp
from ..resnet import ResNet22, ResNetConfig
from ..train import net_to_dict
from ..train.config import SWITCH_REFITS
from ..train.dist import Dist
from ..train.run import Run
from .loop import (
    calib_images,
    ce_loss,
    convert,
    convert_all,
    kd_loss,
    load_teacher,
    phase_note,
    refit,
    train_phase,
)
from .setup import (
    LAYER_EVAL,
    METHODS,
    CifarConfig,
    data_label,
    evaluate,
    load_cifar_tensors,
    ranks_identical,
)


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
        acc = phase_note(run, f"{tk} accuracy")  # measured before, if a resumed run skipped it
        if acc is None:
            acc = phase_note(run, f"{tk} accuracy",
                             evaluate(net, data[2][:LAYER_EVAL], data[3][:LAYER_EVAL]))
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
    if run.load_ckpt("stage2") is None and cfg.switch_refit == "teacher":
        refit(run, net, teacher, calib_images(cfg, data), range(len(net.layers)))
    loss = kd_loss(teacher, cfg.beta, None)
    train_phase(run, net, data, loss, epochs=cfg.epochs, lr=cfg.final_lr, tag="stage2")
    run.cfg = cfg
    return net, {**r1, "accuracy_lse": acc_lse, "accuracy_lse_max": acc_lse_max}


# -- CLI -------------------------------------------------------------------------------------
def parse_args(argv=None) -> CifarConfig:
    d = CifarConfig()
    p = argparse.ArgumentParser(
        prog="python -m model.train_cifar",
        description="One CIFAR-10 ResNet-22 run (the paper's Table 3 methods).",
    )
    p.add_argument("--method", choices=METHODS, default=d.method)
    p.add_argument("--out", default=d.out)
    p.add_argument("--form", choices=("bm4", "bm15"), default=d.form)
    p.add_argument("--op", choices=("max", "lse", "smorph", "lmorph"), default=d.op)
    p.add_argument("--alpha", type=float, default=d.alpha)
    p.add_argument("--alpha-end", type=float, default=None)
    p.add_argument("--teacher", default=None)
    p.add_argument("--first-method", choices=("kd", "lwkd"), default=d.first_method)
    p.add_argument("--switch-refit", choices=SWITCH_REFITS, default=d.switch_refit,
                   help="two_stage: at the switch to the hard max keep the weights (none, the "
                   "paper's) or refit every layer to the teacher (teacher, as Table 3 was run)")
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
