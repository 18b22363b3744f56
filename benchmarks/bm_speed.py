"""Forward+backward time of the BM layers relative to ``conv2d`` at the paper's LeNet shapes.

    python benchmarks/bm_speed.py [--batch 128] [--threads 1] [--repeats 5]

For each of the five convolutions and the classifier of the LeNet (MNIST, batch ``--batch``), it
times forward + backward (input and weight gradients) of the classical layer and of the 1.5-BM
layer with the hard max (the native kernel, model/native/kernels.cc, and tropical-gemm) and
with LSE (alpha = 2, float32; alpha = 1 learnt, as in the authors' protocol of Tables 1-2;
alpha = 16, float64), and prints the per-layer and whole-network ratios.
Goals (issue 3): hard max <= 5x, LSE <= 3x.
Timings are medians over ``--repeats`` runs after one warm-up, the variants of a layer taking
turns within each repeat; the machine's load still shows in them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    import torch
    from torch import nn

    from model.layers import convert
    from model.maxops import MaxOp

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = [(1, 32, 28), (32, 16, 26), (16, 16, 24), (16, 16, 22), (16, 16, 20)]
    layers = [(nn.Conv2d(c, o, 3), (args.batch, c, h, h)) for c, o, h in shapes]
    layers.append((nn.Linear(5184, 10), (args.batch, 5184)))
    import model.maxops as mo

    class TropicalGemm(nn.Module):
        """The layer with the native max-times kernel turned off (tropical-gemm's path)."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            native, mo._native_lib = mo._native_lib, lambda u: None
            try:
                return self.inner(x)
            finally:
                mo._native_lib = native

    variants = {
        "max": MaxOp("max"),
        "max tropical-gemm": MaxOp("max"),
        "lse a=2 f32": MaxOp("lse", alpha=2.0),
        "lse a=1 learnt": MaxOp("lse", alpha=1.0, learnable=True),
        "lse a=16 f64": MaxOp("lse", alpha=16.0),
    }

    def timeit(mods, shape):
        """Median seconds of each module; the modules take turns within every repeat, so that
        a change in the machine's load hits them alike."""
        x = torch.rand(shape).requires_grad_(True)
        ts = {k: [] for k in mods}
        for r in range(args.repeats + 1):
            for k, layer in mods.items():
                layer.zero_grad(set_to_none=True)
                x.grad = None
                t0 = time.perf_counter()
                layer(x).sum().backward()
                if r:
                    ts[k].append(time.perf_counter() - t0)
        return {k: statistics.median(v) for k, v in ts.items()}

    print(
        f"batch {args.batch}, {args.threads} thread(s), torch {torch.__version__}; "
        "forward+backward seconds (ratio to the classical layer)"
    )
    head = f"{'layer':<26}{'classical':>11}" + "".join(f"{k:>22}" for k in variants)
    print(head)
    totals = {k: 0.0 for k in ("classical", *variants)}
    for layer, shape in layers:
        mods = {"classical": layer}
        mods.update({k: convert(layer, "bm15", op=op) for k, op in variants.items()})
        mods["max tropical-gemm"] = TropicalGemm(mods["max tropical-gemm"])
        t = timeit(mods, shape)
        for k in totals:
            totals[k] += t[k]
        t_c = t["classical"]
        row = f"{str(tuple(shape)):<26}{t_c:>11.4f}"
        for k in variants:
            row += f"{t[k]:>13.4f} ({t[k] / t_c:5.1f}x)"
        print(row)
    row = f"{'whole LeNet':<26}{totals['classical']:>11.4f}"
    for k in variants:
        row += f"{totals[k]:>13.4f} ({totals[k] / totals['classical']:5.1f}x)"
    print(row)
    r_max = totals["max"] / totals["classical"]
    r_lse = totals["lse a=2 f32"] / totals["classical"]
    r_tg = totals["max tropical-gemm"] / totals["classical"]
    print(
        f"RATIO hard-max {r_max:.2f}x (goal <= 5x; tropical-gemm {r_tg:.2f}x), "
        f"LSE {r_lse:.2f}x (goal <= 3x), "
        f"LSE learnt alpha {totals['lse a=1 learnt'] / totals['classical']:.2f}x, "
        f"LSE float64 {totals['lse a=16 f64'] / totals['classical']:.2f}x"
    )
    return {"max": r_max, "lse": r_lse}


if __name__ == "__main__":
    main()
