"""RTL: the whole-network accelerator in Icarus or Verilator (``SIM``): the class and every
logit against the reference, and the cycles per image against the cycle model.

The small random networks run in both simulators. The paper LeNet (16x16 array) is marked
``slow``: Icarus manages about a thousand cycles a second on it, so CI runs it in Verilator
(``SIM=verilator pytest -m rtl sim``)."""

import numpy as np
import pytest

from conftest import require_data
from hw.accel.accelerator import Accelerator
from hw.accel.plan import plan_network, predict_image_cycles, predict_interval
from model.params import PRESETS, BMParams, LayerSpec
from model.reference import ref_network
from sim.nets import SHIPPED, lenet_layers, random_tensors
from sim.runner import run_cocotb

pytestmark = pytest.mark.rtl


def _run(plan, layers, tensors, images, tag, *, backpressure=0.0):
    images = [np.asarray(im).reshape(-1) for im in images]
    cfg = {
        "images": [list(map(int, im)) for im in images],
        "expected": [
            ref_network(plan.params, layers, tensors,
                        im.reshape(plan.input_shape).astype(np.int64) >> plan.pixel_shift
                        ).tolist()
            for im in images
        ],
        "cycles": predict_image_cycles(plan),
        "backpressure": backpressure,
        "interval": predict_interval(plan),
    }
    run_cocotb(Accelerator(plan, tensors), toplevel="accel", module="tb_accel", params=cfg,
               tag=tag)


def _small_net(p, head="bm15"):
    """Conv-conv-linear on 12x12 images; the classifier's neuron is ``head`` (a signed head:
    random signs, no ``c_shift``)."""
    layers = [LayerSpec("conv", 1, 6, 3, c_shift=2, out_shift=7),
              LayerSpec("conv", 6, 5, 3, c_shift=2, out_shift=8),
              LayerSpec("linear", 5 * 8 * 8, 4, c_shift=2 if head == "bm15" else 0,
                        out_shift=5, relu=False, neuron=head)]
    return layers, random_tensors(p, layers, seed=3)


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("backpressure", [0.0, 0.5])
@pytest.mark.parametrize("preset", ["bm8", "mac8"])
def test_accel_small_network(preset, backpressure, overlap):
    """A conv-conv-linear network on 12x12 images, random tensors, 4x4 array; images one at a
    time, then back to back (latency and interval against the model)."""
    p = PRESETS[preset]
    layers, tensors = _small_net(p)
    plan = plan_network(p, layers, (1, 12, 12), rows=4, cols=4, overlap=overlap)
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, 144) for _ in range(3)]
    images[0][:40] = 0  # all-zero windows: the BM zero flag
    _run(plan, layers, tensors, images, tag=f"small-{preset}-{backpressure}-{int(overlap)}",
         backpressure=backpressure)


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("head,preset", [("lns", "bm8"), ("bm2", "bm8"), ("lns", "bm8f6")])
def test_accel_signed_head(head, preset, overlap):
    """The ``lns`` and ``bm2`` classifiers (on the FC engine) in the small network: every logit
    against the reference, images one at a time (latency) and back to back (interval)."""
    p = PRESETS[preset]
    layers, tensors = _small_net(p, head)
    plan = plan_network(p, layers, (1, 12, 12), rows=4, cols=4, overlap=overlap)
    assert plan.fc_head and plan.head == head
    rng = np.random.default_rng(6)
    images = [rng.integers(0, 256, 144) for _ in range(3)]
    images[0][:40] = 0  # all-zero windows: the BM zero flag
    _run(plan, layers, tensors, images, tag=f"head-{head}-{preset}-{int(overlap)}")


@pytest.mark.slow
@pytest.mark.parametrize("arith,overlap", [("bm", False), ("bm", True), ("mac", True)])
def test_accel_shipped_export(arith, overlap, mnist):
    """The shipped LeNet export on real MNIST test images, 16x16 array; with ``overlap`` (the
    ULX3S build) without back-pressure, so that the latency and the interval are checked."""
    from model.export import load_export

    exp = load_export(require_data(SHIPPED[arith], f"shipped {arith} export"))
    plan = plan_network(exp.params, list(exp.layers), exp.input_shape, exp.pixel_shift,
                        overlap=overlap)
    _run(plan, list(exp.layers), exp.tensors, mnist[2][:4],
         tag=f"shipped-{arith}-{int(overlap)}", backpressure=0.0 if overlap else 0.2)


@pytest.mark.parametrize("preset", ["bm8", "mac8"])
def test_weight_bit_flip_in_rtl_memory_is_caught(preset, tmp_path):
    """Mutation check: one weight bit flipped in the RTL's memory only (the reference keeps the
    true weight) must make the run fail."""
    from sim.fullset import flip_weight
    from sim.runner import SimError, build, run_tests, simulator

    p = PRESETS[preset]
    layers, tensors = _small_net(p)
    plan = plan_network(p, layers, (1, 12, 12), rows=4, cols=4)
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, 144) for _ in range(3)]
    expected = [ref_network(p, layers, tensors, im.reshape(1, 12, 12)) for im in images]
    # the bit below the sign of a layer-0 weight: for BM the log weight 96 becomes 352 (the
    # product then wins its max), for MAC -82 becomes -18 (checked against the reference below)
    width = getattr(p, "w_log_bits", None) or p.w_bits
    bad = flip_weight(tensors, f"0,4,{width - 2}", p)
    assert any((ref_network(p, layers, bad, im.reshape(1, 12, 12)) != e).any()
               for im, e in zip(images, expected, strict=True))
    cfg = {"images": [list(map(int, im)) for im in images],
           "expected": [e.tolist() for e in expected],
           "cycles": predict_image_cycles(plan), "backpressure": 0.0,
           "report": str(tmp_path / "report.json")}
    sim = simulator()
    _require(sim)
    build_dir = build(Accelerator(plan, bad), "accel", sim)
    with pytest.raises(SimError):
        run_tests(build_dir, "accel", "tb_accel", sim, cfg, build_dir / "runs" / f"flip-{preset}")
    import json
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["mismatches"], "the flipped weight changed no logit"


@pytest.mark.parametrize("overlap", [False, True])
def test_native_harness_small_network(tmp_path, overlap):
    """The native Verilator harness of ``sim.fullset`` on the small network: every logit and the
    cycle count equal (with ``overlap`` the images stream back to back and the intervals are
    checked too), and a flipped weight bit is reported."""
    from sim.fullset import flip_weight, run_harness
    from sim.runner import build_native

    _require("verilator")
    p = PRESETS["bm8"]
    layers, tensors = _small_net(p)
    plan = plan_network(p, layers, (1, 12, 12), rows=4, cols=4, overlap=overlap)
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (6, 144))
    images[0, :40] = 0
    want = np.stack([ref_network(p, layers, tensors, im.reshape(1, 12, 12)) for im in images])
    cycles = predict_image_cycles(plan)
    r = run_harness(build_native(Accelerator(plan, tensors)), images, want, tmp_path / "ok",
                    max_cycles=10 * cycles, stream=overlap)
    assert r["returncode"] == 0, r
    assert (r["images"], r["n_mismatched_images"], r["cycles"]) == (6, 0, [cycles])
    assert r["intervals"] == ([predict_interval(plan)] if overlap else [])
    bad = flip_weight(tensors, "0,4,8", p)
    r = run_harness(build_native(Accelerator(plan, bad)), images, want, tmp_path / "bad",
                    max_cycles=10 * cycles, stream=overlap)
    assert r["returncode"] == 1 and r["n_mismatched_images"] > 0


def _require(sim):
    from sim.runner import require_simulator

    require_simulator(sim)


def test_random_tensors_in_range():
    p = PRESETS["bm8"]
    assert isinstance(p, BMParams)
    for t, s in zip(random_tensors(p, lenet_layers()), lenet_layers(), strict=True):
        assert t["w"].shape == s.weight_shape
        assert p.w_log_min <= t["w"].min() and t["w"].max() <= p.w_log_max
