"""RTL: the whole-network accelerator in Icarus or Verilator (``SIM``): class and every logit of
real MNIST test images against the reference, cycles against the cycle model."""

import numpy as np
import pytest

from conftest import require_data
from hw.accel import Accelerator, plan_network, predict_image_cycles
from model.params import PRESETS
from model.reference import ref_network
from sim.nets import SHIPPED, lenet_layers, random_tensors
from sim.runner import run_cocotb

pytestmark = pytest.mark.rtl


def _run(plan, tensors, images, tag, *, backpressure=0.0):
    dut = Accelerator(plan, tensors)
    layers = [lp for lp in plan.layers]  # noqa: F841 (kept for the failure message)
    cfg = {
        "images": [list(map(int, np.asarray(im).reshape(-1))) for im in images],
        "expected": [ref_network(plan.params, _specs[id(plan)], tensors,
                                 np.asarray(im).reshape(plan.input_shape) >> plan.pixel_shift
                                 ).tolist() for im in images],
        "cycles": predict_image_cycles(plan),
        "backpressure": backpressure,
    }
    run_cocotb(dut, toplevel="accel", module="tb_accel", params=cfg, tag=tag)


_specs = {}


def _plan(p, layers, input_shape=(1, 28, 28), pixel_shift=0, rows=16, cols=16):
    plan = plan_network(p, layers, input_shape, pixel_shift, rows=rows, cols=cols)
    _specs[id(plan)] = layers
    return plan


@pytest.mark.parametrize("arith", ["bm", "mac"])
def test_accel_shipped_export(arith, mnist):
    """The shipped LeNet export on real MNIST test images."""
    from model.export import load_export

    path = require_data(SHIPPED[arith], f"shipped {arith} export")
    exp = load_export(path)
    plan = _plan(exp.params, list(exp.layers), exp.input_shape, exp.pixel_shift)
    images = mnist[2][:4]
    _run(plan, exp.tensors, images, tag=f"shipped-{arith}", backpressure=0.2)


@pytest.mark.parametrize("preset", ["bm8", "mac8"])
def test_accel_lenet_random_weights(preset, mnist):
    """The paper LeNet's shapes with seeded random tensors: structure-only, on MNIST images."""
    p = PRESETS[preset]
    layers = lenet_layers()
    plan = _plan(p, layers)
    _run(plan, random_tensors(p, layers, seed=1), mnist[2][:2], tag=f"random-{preset}")
