"""MNIST tensors for training, the batch order, augmentation and the test accuracy."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .config import TrainConfig

__all__ = ["load_data", "batches", "augment_batch", "evaluate"]


def load_data(cfg: TrainConfig):
    from ..data import default_data_dir, load_mnist

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
def evaluate(fn, x: torch.Tensor, y: torch.Tensor, bs: int = 500) -> float:
    correct = 0
    for i in range(0, len(x), bs):
        correct += int((fn(x[i : i + bs]).argmax(1) == y[i : i + bs]).sum())
    return correct / len(x)
