"""Data-parallel processes (``torchrun``): rank, world size and the process group."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Dist"]


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
