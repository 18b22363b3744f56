"""The named networks: one place that builds a LeNet or a ResNet from its name.

It sits above :mod:`model.nets` and :mod:`model.resnet`, so neither imports the other.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from .nets import NET_CONFIGS, LeNet, LeNetConfig
from .resnet import ResNet22, ResNetConfig

__all__ = ["NET_CONFIGS", "create_net"]


def create_net(name: str, **overrides) -> nn.Module:
    """Build a network from a named configuration with field overrides."""
    if name == "resnet22":
        return ResNet22(ResNetConfig(**overrides))
    if name not in NET_CONFIGS:
        raise ValueError(f"unknown net {name!r}; known: {sorted(NET_CONFIGS)}")
    cfg = replace(NET_CONFIGS[name], **overrides)
    if isinstance(cfg, LeNetConfig):
        return LeNet(cfg)
    raise TypeError(f"no builder for {type(cfg).__name__}")  # pragma: no cover
