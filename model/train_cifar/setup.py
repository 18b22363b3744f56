"""A CIFAR-10 run's setup: the configuration, the process group, the data and the run's files."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..resnet import ResNet22
from ..train import net_from_dict
from ..train.config import BaseConfig

METHODS = ("classical", "direct", "kd", "lwkd", "two_stage")
LAYER_EVAL = 500  # test images behind lwkd's per-layer accuracy (the final figure uses all)


@dataclass
class CifarConfig(BaseConfig):
    method: str = "classical"
    out: str = "runs/cifar/classical"
    epochs: float = 30
    layer_epochs: float = 1.0  # lwkd: per layer (fractions allowed)
    final_epochs: float = 0
    lr: float | None = None  # default: 0.1 (SGD) for classical, 1e-3 (AdamW) otherwise
    final_lr: float = 3e-4
    weight_decay: float = 5e-4
    stem: int = 16  # ResNet width (16 is the paper's); smaller only for tests
    subset: int = 0  # training images (0: all 50,000)
    test_subset: int = 0  # test images (0: all 10,000)
    augment: bool = True
    amp: bool = False

    def __post_init__(self):
        self.check_choices(method=METHODS)
        if self.method not in ("classical", "direct") and not self.teacher:
            raise ValueError(f"--method {self.method} needs --teacher (a classical model.pt)")
        self.check_switch_refit()

    @property
    def lr_(self) -> float:
        if self.lr is not None:
            return self.lr
        return 0.1 if self.method == "classical" else 1e-3


# -- data ------------------------------------------------------------------------------------
def load_cifar_tensors(cfg: CifarConfig):
    """``(x_train, y_train, x_test, y_test)``: uint8 ``(N, 3, 32, 32)`` and int64 labels."""
    from ..data import default_data_dir, load_cifar10

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


def make_optimizer(cfg: CifarConfig, params, lr: float, sgd: bool):
    params = [p for p in params if p.requires_grad]
    if sgd:
        return torch.optim.SGD(
            params, lr=lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


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

    from ..data import default_data_dir, find_dataset_dir

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
