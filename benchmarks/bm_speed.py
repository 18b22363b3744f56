"""Forward+backward time of the BM layers relative to ``conv2d`` at the paper's LeNet shapes.

    python benchmarks/bm_speed.py [--batch 128] [--threads 1] [--repeats 5]

For each of the five convolutions and the classifier of the LeNet (MNIST, batch ``--batch``), it
times forward + backward (input and weight gradients) of the classical layer and of:

- the 1.5-BM layer with the hard max (the native kernel, model/native/kernels.cc, and
  tropical-gemm);
- the 1.5-BM layer with LSE (alpha = 2, float32; alpha = 1 learnt, as in the authors' protocol of
  Tables 1-2; alpha = 16, float64);
- the 4-BM layer with S-morph and L-morph at a learnt alpha = 1 (Table 1's authors' cells), the
  smooth branches' elementwise chains as native passes and, for S-morph, as PyTorch operations;

and prints each variant's per-layer times and whole-network ratio.
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

    class Without(nn.Module):
        """The layer with one native path of model.maxops turned off (its portable path)."""

        def __init__(self, inner, name, off):
            super().__init__()
            self.inner, self.name, self.off = inner, name, off

        def forward(self, x):
            native = getattr(mo, self.name)
            setattr(mo, self.name, self.off)
            try:
                return self.inner(x)
            finally:
                setattr(mo, self.name, native)

    learnt = {"alpha": 1.0, "learnable": True}
    no_ew = ("_native_ew", lambda u, v: None)
    variants = {  # name: (form, op, the native path turned off or None)
        "max": ("bm15", MaxOp("max"), None),
        "max tropical-gemm": ("bm15", MaxOp("max"), ("_native_lib", lambda u: None)),
        "lse a=2 f32": ("bm15", MaxOp("lse", alpha=2.0), None),
        "lse a=1 learnt": ("bm15", MaxOp("lse", **learnt), None),
        "lse a=16 f64": ("bm15", MaxOp("lse", alpha=16.0), None),
        "4-BM smorph a=1 learnt": ("bm4", MaxOp("smorph", **learnt), None),
        "4-BM smorph PyTorch": ("bm4", MaxOp("smorph", **learnt), no_ew),
        "4-BM lmorph a=1 learnt": ("bm4", MaxOp("lmorph", **learnt), None),
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
        "forward+backward seconds, and the whole network's ratio to the classical layers"
    )
    times = {k: [] for k in ("classical", *variants)}
    for layer, shape in layers:
        mods = {"classical": layer}
        for k, (form, op, off) in variants.items():
            mods[k] = convert(layer, form, op=op)
            if off is not None:
                mods[k] = Without(mods[k], *off)
        for k, t in timeit(mods, shape).items():
            times[k].append(t)
    names = [f"{s[1]}x{s[-1]}" if len(s) == 4 else f"fc {s[1]}" for _, s in layers]
    print(f"{'variant':<24}" + "".join(f"{n:>10}" for n in names) + f"{'whole':>10}{'ratio':>8}")
    whole = {k: sum(v) for k, v in times.items()}
    ratio = {k: whole[k] / whole["classical"] for k in whole}
    for k, ts in times.items():
        cols = "".join(f"{t:>10.4f}" for t in ts)
        print(f"{k:<24}{cols}{whole[k]:>10.4f}{ratio[k]:>7.2f}x")
    r_max, r_lse = ratio["max"], ratio["lse a=2 f32"]
    print(
        f"RATIO hard-max {r_max:.2f}x "
        f"(goal <= 5x; tropical-gemm {ratio['max tropical-gemm']:.2f}x), "
        f"LSE {r_lse:.2f}x (goal <= 3x), "
        f"LSE learnt alpha {ratio['lse a=1 learnt']:.2f}x, "
        f"LSE float64 {ratio['lse a=16 f64']:.2f}x, "
        f"4-BM S-morph {ratio['4-BM smorph a=1 learnt']:.2f}x "
        f"(PyTorch chains {ratio['4-BM smorph PyTorch']:.2f}x), "
        f"4-BM L-morph {ratio['4-BM lmorph a=1 learnt']:.2f}x"
    )
    return {"max": r_max, "lse": r_lse}


if __name__ == "__main__":
    main()
