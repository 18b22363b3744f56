"""A run folder (log, resumable checkpoints, segments) and the model files (``model.pt``)."""

from __future__ import annotations

import json
import os
import pickle
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from ..cli import CheckpointError
from ..layers import BMLayer
from ..maxops import MaxOp
from ..nets import LeNet
from ..registry import NET_CONFIGS, create_net
from .config import BaseConfig
from .dist import Dist

__all__ = ["Run", "net_to_dict", "net_from_dict", "load_model", "save_model"]


class Run:
    """A training run's folder, log, time budget and resumable checkpoint, for every network
    (LeNet: :mod:`model.train`; ResNet-22: :mod:`model.train_cifar`).

    Under data-parallel training (``dd``, a :class:`~model.train.dist.Dist` of several
    processes) rank 0 writes the files and the log, and :meth:`over_budget` gives every process
    rank 0's answer. ``cfg.budget_s`` (0: none) is a wall-clock limit.
    """

    def __init__(self, cfg: BaseConfig, dd: Dist | None = None):
        self.cfg = cfg
        self.dd = dd if dd is not None else Dist(cfg.device)
        self.dir = Path(cfg.out)
        self.t0 = time.time()
        self.budget_hit = False
        self.prior: list[dict] = []  # the earlier segments of a resumed run (from the checkpoint)
        if self.dd.main:
            self.dir.mkdir(parents=True, exist_ok=True)
            info = asdict(cfg) if not self.dd.on else {**asdict(cfg), "world_size": self.dd.world}
            (self.dir / "config.json").write_text(json.dumps(info, indent=2) + "\n")

    def log(self, msg: str) -> None:
        if self.dd.main:
            print(f"[{time.strftime('%H:%M:%S')} +{time.time() - self.t0:7.0f}s] {msg}", flush=True)

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
        import torch.distributed as dist

        t = torch.tensor([float(v)], device=self.cfg.device)
        dist.broadcast(t, 0)
        return float(t[0])

    @property
    def ckpt_path(self) -> Path:
        return self.dir / "ckpt.pt"

    def load_ckpt(self, tag: str | None = None):
        """The checkpoint (``None`` if there is none, or if ``tag`` is given and it is of
        another phase)."""
        if self.ckpt_path.exists():
            ck = torch.load(self.ckpt_path, weights_only=False, map_location=self.cfg.device)
            if tag is not None and ck.get("tag") != tag:
                return None
            self.prior = list(ck.get("segments", []))
            return ck
        return None

    def segments(self) -> list[dict]:
        """Wall time per segment of the run, this one last: ``[{device, wall_s}]``. A segment
        counts up to its last checkpoint; the work an interruption lost is not counted."""
        now = {"device": self.cfg.device, "wall_s": round(time.time() - self.t0, 1)}
        return [*self.prior, now]

    def save_ckpt(self, state: dict) -> None:
        if self.dd.main:
            tmp = self.ckpt_path.with_suffix(".tmp")
            torch.save({**state, "segments": self.segments()}, tmp)
            os.replace(tmp, self.ckpt_path)
        self.dd.barrier()

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
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
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
