"""The fixture networks of the RTL tests (defined in :mod:`model.fixtures`)."""

from model.fixtures import SHIPPED, lenet_layers, random_tensors

__all__ = ["SHIPPED", "lenet_layers", "random_tensors"]
