"""The whole test set through the accelerator RTL: ``python -m sim.fullset``.

Every image of the test set goes through the accelerator RTL in Verilator, and every logit of every
image is compared with :func:`model.reference.ref_network_batch`. The set is split into ``--jobs``
slices simulated at once on one shared build (``-O3 --x-assign fast``). Prints one line per slice
and a summary; exit status 0 only if every logit of every image is identical.

Two harnesses check the same thing: ``native`` (default) is a C++ Verilator testbench
(``sim/native/harness.cpp``) with no per-cycle callbacks, about four times faster; ``cocotb`` runs
the test suite's testbench (``sim/tb_accel.py``, Verilator or Icarus through VPI).

    python -m sim.fullset --weights model/weights/lenet_bm15_max.npz          # 10000 images
    python -m sim.fullset --weights model/weights/lenet_mac8.npz --limit 200  # a quick look

``--overlap`` checks the pipelined accelerator (the ULX3S build,
``hw.accel.plan.plan_network``): the images then go in back to back, as in use, and the
interval between consecutive images must equal ``hw.accel.plan.predict_interval`` too.

``--flip-weight LAYER,INDEX,BIT`` flips one bit of one weight in the RTL's memory only (the
reference keeps the true weight): the mutation check, which must report mismatches.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

__all__ = ["main", "parse_args", "flip_weight", "run_harness"]


def run_harness(exe, images, want, work: Path, *, max_cycles: int, stream: bool = False) -> dict:
    """Run the native harness ``exe`` on ``images`` (``(N, ...)`` pixels) against the expected
    logits ``want`` (``(N, classes)``). Returns its JSON report plus ``returncode`` and ``log``;
    ``n_mismatched_images`` counts every image with a wrong logit (``mismatches`` lists the
    first 50 as ``[image, logit, expected, got]``). With ``stream`` the images go in back to
    back: ``cycles`` is then the first image's latency and ``intervals`` the distinct gaps
    between consecutive images."""
    work.mkdir(parents=True, exist_ok=True)
    n = len(images)
    blob = np.concatenate([np.asarray(images).reshape(n, -1).astype(np.int64),
                           np.asarray(want).astype(np.int64)], axis=1)
    if np.abs(blob).max(initial=0) >= 2**31:
        raise ValueError("a logit does not fit the harness's int32 words")
    head = np.array([n, blob.shape[1] - want.shape[1], want.shape[1]])
    path = work / "input.bin"
    np.concatenate([head, blob.reshape(-1)]).astype("<i4").tofile(path)
    t = time.time()
    cmd = [str(exe), str(path), str(max_cycles)] + (["stream"] if stream else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = work / "harness.log"
    log.write_text(proc.stdout + proc.stderr)
    try:
        r = json.loads(proc.stdout)
    except json.JSONDecodeError:
        r = {"images": 0, "mismatches": [], "n_mismatched_images": 0, "cycles": [],
             "intervals": [], "wall_s": time.time() - t}
    r.update(returncode=proc.returncode, log=str(log))
    return r


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m sim.fullset", description=__doc__.split("\n")[0])
    p.add_argument("--weights", default=None,
                   help="export (.npz); default: the shipped BM export, else the MAC one")
    p.add_argument("--data-dir", default=None,
                   help="MNIST-style IDX folder, or a parent of mnist/ ($BM_DATA_DIR)")
    p.add_argument("--limit", type=int, default=0, help="first N test images (0: all)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--harness", choices=("native", "cocotb"), default="native")
    p.add_argument("--sim", choices=("verilator", "icarus"), default="verilator",
                   help="simulator of the cocotb harness")
    p.add_argument("--array", default="16x16", help="ROWSxCOLS of the accelerator")
    p.add_argument("--overlap", action="store_true",
                   help="the pipelined accelerator, images streamed back to back")
    p.add_argument("--flip-weight", default=None, metavar="LAYER,INDEX,BIT")
    p.add_argument("--out", default=None, help="write the summary JSON here")
    return p.parse_args(argv)


def flip_weight(tensors, spec: str, params) -> list[dict]:
    """A copy of ``tensors`` with bit ``BIT`` of flat weight ``INDEX`` of layer ``LAYER`` flipped
    (kept inside the weight field's width, two's complement)."""
    layer, index, bit = (int(v) for v in spec.split(","))
    out = [{k: np.array(v, copy=True) for k, v in t.items()} for t in tensors]
    w = out[layer]["w"].reshape(-1)
    width = getattr(params, "w_log_bits", None) or params.w_bits
    if not 0 <= bit < width:
        raise ValueError(f"bit must be in 0..{width - 1}, not {bit}")
    raw = (int(w[index]) & ((1 << width) - 1)) ^ (1 << bit)
    if raw >> (width - 1):
        raw -= 1 << width  # weights (and BM log weights) are two's complement
    w[index] = raw
    out[layer]["w"] = w.reshape(tensors[layer]["w"].shape)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    from hw.accel.plan import plan_network, predict_image_cycles, predict_interval
    from model.data import DatasetError, default_data_dir, load_mnist_split
    from model.export import ExportError, load_export
    from model.reference import ref_network_batch
    from sim.nets import SHIPPED
    from sim.runner import SimError, missing_simulator

    weights = Path(args.weights) if args.weights else (
        SHIPPED["bm"] if SHIPPED["bm"].exists() else SHIPPED["mac"])
    try:
        exp = load_export(weights)
        images, labels = load_mnist_split(args.data_dir or default_data_dir(), "test")
    except (ExportError, DatasetError, OSError) as e:
        print(f"fullset: {e}", file=sys.stderr)
        return 2
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]
    if args.harness == "native":
        args.sim = "verilator"
    why = missing_simulator(args.sim)
    if why:
        print(f"fullset: {why}", file=sys.stderr)
        return 2
    rows, cols = (int(v) for v in args.array.lower().split("x"))
    plan = plan_network(exp.params, list(exp.layers), exp.input_shape, exp.pixel_shift,
                        rows=rows, cols=cols, overlap=args.overlap)
    rtl_tensors = exp.tensors
    if args.flip_weight:
        rtl_tensors = flip_weight(exp.tensors, args.flip_weight, exp.params)
    cycles, interval = predict_image_cycles(plan), predict_interval(plan)

    def build():
        t = time.time()
        return _build_rtl(args, plan, rtl_tensors), time.time() - t

    # the RTL builds (mostly a compiler in a subprocess) while the reference computes
    with ThreadPoolExecutor(1) as pool:
        building = pool.submit(build)
        t0 = time.time()
        want = ref_network_batch(exp.params, list(exp.layers), exp.tensors, exp.codes(images))
        t_ref = time.time() - t0
        print(f"fullset: {weights.name} ({exp.arith}), {len(images)} images, {rows}x{cols} array"
              f"{', pipelined' if args.overlap else ''}, latency {cycles} and interval {interval} "
              f"cycles/image (model), {args.sim} ({args.harness} harness), {args.jobs} "
              f"jobs; reference {t_ref:.1f} s", flush=True)
        try:
            target, t_build = building.result()
        except SimError as e:
            print(f"fullset: {e}", file=sys.stderr)
            return 2
    t_prep = time.time() - t0
    print(f"fullset: built in {t_build:.0f} s beside the reference ({target['dir']}); "
          f"both done in {t_prep:.0f} s", flush=True)
    t0 = time.time()
    results = _run_slices(args, target, images, want, cycles, interval)
    wall = time.time() - t0
    summary = _summary(args, weights, exp, results, want, labels, cycles, interval)
    summary.update(build_s=round(t_build, 1), reference_s=round(t_ref, 1),
                   prepare_s=round(t_prep, 1), wall_s=round(wall, 1))
    done, n_bad, n = summary["simulated"], summary["simulated"] - summary["identical"], len(images)
    correct = int((want.argmax(1) == labels).sum())
    print(f"fullset: {done - n_bad}/{n} images identical (every logit) in {wall:.0f} s "
          f"+ build and reference {t_prep:.0f} s; cycles/image {summary['cycles_per_image']} "
          f"(model {cycles})"
          + (f"; intervals {summary['intervals']} (model {interval})" if args.overlap else "")
          + "; reference "
          f"accuracy {correct / n:.4f} ({correct}/{n})", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    failed = [r for r in results if not r["ok"]]
    for r in failed[:3]:
        print(f"fullset: slice {r['slice']} failed; log {r['log']}", file=sys.stderr)
    timing_ok = summary["cycles_per_image"] == [cycles] and (
        not args.overlap or summary["intervals"] == [interval])
    if not timing_ok:
        print("fullset: the measured cycles differ from the cycle model", file=sys.stderr)
    return 0 if (done == n and not n_bad and not failed and timing_ok) else 1


def _build_rtl(args, plan, tensors) -> dict:
    """The simulator build of the accelerator: ``{"dir", "exe"}`` (``exe`` for the native
    harness)."""
    from hw.accel.accelerator import Accelerator
    from sim.runner import build, build_native

    if args.harness == "native":
        exe = build_native(Accelerator(plan, tensors))
        return {"dir": exe.parent.parent, "exe": exe}
    return {"dir": build(Accelerator(plan, tensors), "accel", args.sim, fast=True), "exe": None}


def _run_slices(args, target, images, want, cycles, interval) -> list[dict]:
    """The images in ``--jobs`` contiguous slices, one simulator each, side by side."""
    from sim.runner import SimError, run_tests

    n = len(images)
    jobs = max(1, min(args.jobs, n))
    bounds = np.linspace(0, n, jobs + 1).astype(int)
    build_dir = target["dir"]

    def native(a, b, work):
        r = run_harness(target["exe"], images[a:b], want[a:b], work, max_cycles=50 * cycles,
                        stream=args.overlap)
        r["n_bad"] = r.pop("n_mismatched_images")
        r["ok"] = r["returncode"] in (0, 1) and r["images"] == b - a
        return r

    def cocotb(a, b, work):
        report = work / "report.json"
        cfg = {
            "images": [list(map(int, im.reshape(-1))) for im in images[a:b]],
            "expected": want[a:b].tolist(),
            "cycles": cycles,
            "backpressure": 0.0,
            "report": str(report),
            **({"interval": interval} if args.overlap else {}),
        }
        try:
            run_tests(build_dir, "accel", "tb_accel", args.sim, cfg, work)
            ok = True
        except SimError:
            ok = False
        log = str(work / "test.log")
        if not report.exists():
            return {"ok": False, "images": 0, "n_bad": 0, "mismatches": [], "cycles": [],
                    "wall_s": 0.0, "log": log}
        r = json.loads(report.read_text())
        r.update(ok=ok and not r["mismatches"], n_bad=len(r["mismatches"]), log=log)
        return r

    def run_slice(j):
        a, b = int(bounds[j]), int(bounds[j + 1])
        work = build_dir / "runs" / f"fullset-{os.getpid()}-{j}"
        r = (native if args.harness == "native" else cocotb)(a, b, work)
        r["slice"] = (a, b)
        r["mismatches"] = [[a + m[0], *m[1:]] for m in r["mismatches"]]
        print(f"fullset: images {a}..{b - 1}: {r['images'] - r['n_bad']}/{r['images']} "
              f"identical, {r['wall_s']:.0f} s", flush=True)
        return r

    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(run_slice, range(jobs)))


def _summary(args, weights, exp, results, want, labels, cycles, interval) -> dict:
    """What the run found, as written by ``--out`` (without the timings)."""
    done = sum(r["images"] for r in results)
    n_bad = sum(r["n_bad"] for r in results)
    return {
        "weights": str(weights),
        "arith": exp.arith,
        "images": len(labels),
        "simulated": done,
        "identical": done - n_bad,
        "mismatches": [m for r in results for m in r["mismatches"]][:20],
        "cycles_per_image": sorted({c for r in results for c in r["cycles"]}),
        "cycles_model": cycles,
        "overlap": args.overlap,
        "intervals": sorted({c for r in results for c in r.get("intervals", [])}),
        "interval_model": interval,
        "reference_accuracy": int((want.argmax(1) == labels).sum()) / len(labels),
        "simulator": args.sim,
        "harness": args.harness,
        "jobs": max(1, min(args.jobs, len(labels))),
        "flip_weight": args.flip_weight,
    }


if __name__ == "__main__":
    sys.exit(main())
