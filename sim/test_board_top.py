"""RTL: the board top over its UART pins, in Icarus or Verilator (``SIM``).

With the fixture core (until the accelerator exists) on seeded random images and, when MNIST is
available, on real test images. With the accelerator (``hw/accel/accelerator.py``) on real MNIST
test images checked against :mod:`model.reference`; that test skips while
``hw/accel/accelerator.py`` does not exist.
"""

import numpy as np
import pytest

from hw.boards.top import BoardTop, FixtureCore, FixtureParams, fixture_logits
from sim.runner import run_cocotb

pytestmark = pytest.mark.rtl

DIVISOR = 4  # the fastest the UART allows: keeps a 784-byte image at ~31k cycles
TIMEOUT_BYTES = 16
SEED = 7


def _run(core, images, expected, tag):
    top = BoardTop(core, divisor=DIVISOR, timeout_bytes=TIMEOUT_BYTES, heartbeat_bits=8)
    cfg = {
        "divisor": DIVISOR,
        "timeout_bytes": TIMEOUT_BYTES,
        "n_pixels": core.n_pixels,
        "n_logits": core.n_logits,
        # the timeouts: a pipelined core's latency is longer than its interval
        "cycles_per_image": max(core.cycles_per_image,
                                getattr(core, "latency_cycles", core.cycles_per_image)),
        "images": [list(map(int, im)) for im in images],
        "expected": [list(map(int, e)) for e in expected],
    }
    run_cocotb(top, toplevel="board_top", module="tb_board_top", params=cfg, tag=tag)


def _mnist_images(n):
    try:
        from model.data import load_mnist

        _, _, x_test, _ = load_mnist()
    except Exception:  # no data here: the random images still cover the protocol
        return []
    return [x_test[k].reshape(-1) for k in range(n)]


def test_board_top_fixture_core():
    rng = np.random.default_rng(SEED)
    images = [rng.integers(0, 256, 784), np.full(784, 255)]  # the second: all logits tie at 0
    images += _mnist_images(1)
    expected = [fixture_logits(im) for im in images]
    _run(FixtureCore(FixtureParams()), images, expected, tag="fixture")


@pytest.mark.slow  # the whole LeNet behind a UART: run in Verilator (CI's second pass)
@pytest.mark.parametrize("overlap", [True])  # as the ULX3S and Arty builds make it
def test_board_top_accelerator_mnist(mnist, overlap):
    from hw.boards.top import make_core
    from model.export import load_export
    from model.reference import ref_network

    weights = _default_weights()
    export = load_export(weights)
    core = make_core(weights, export.arith, overlap=overlap)
    _, _, x_test, _ = mnist
    images = [x_test[k] for k in range(3)]
    codes = export.codes(np.stack(images))
    expected = [ref_network(export.params, export.layers, export.tensors, c) for c in codes]
    _run(core, [c.reshape(-1) for c in codes], expected,
         tag=f"accel-{export.arith}-{int(overlap)}")


def _default_weights():
    """The shipped BM export, or the MAC baseline while no BM export ships."""
    from conftest import require_data
    from hw.flow.build import default_weights

    path = default_weights("bm")
    if not path.exists():
        path = default_weights("mac")
    return require_data(path, "a shipped LeNet export")
