"""A stand-in weights export: the paper LeNet with seeded random integer tensors.

Structurally identical to the shipped exports (same params preset, layers, shapes and value
ranges), so a board build from it has the same size, timing and cycles per image; its logits
mean nothing. For builds and RTL runs before (or without) the trained weights:

    python -m sim.random_export --arith bm            # -> build/lenet_bm_random.npz
    python -m hw.build --board ulx3s --weights build/lenet_bm_random.npz
    python -m sim.random_export --net lenet-w4        # the Tang Nano 9K variant
    python -m sim.random_export --head lns            # -> build/lenet_bm_lns_random.npz

``--head`` picks the classifier's neuron (BM only): ``bm15`` (default, the paper's), or the
signed heads ``lns`` and ``bm2`` (random signs beside the random magnitude codes, no
``c_shift``); see :mod:`model.reference`, "The classifier heads".
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from model.export import NetworkExport, save_export
from model.params import NEURONS, PRESETS

from .nets import lenet_layers, random_tensors

__all__ = ["random_export", "write_random_export", "variant_layers", "default_path",
           "PRESET_OF", "VARIANTS"]

ROOT = Path(__file__).resolve().parent.parent
PRESET_OF = {"bm": "bm8", "mac": "mac8"}

# Board-sized variants of the paper LeNet: the same five 3x3 valid convolutions and the final
# linear layer, with fewer channels (see hw/boards/platforms.py for which board builds which, and
# why).
VARIANTS = {
    "lenet": None,  # the paper LeNet: 32, 16, 16, 16, 16
    "lenet-w4": (4, 4, 4, 4, 4),  # Tang Nano 9K (Gowin GW1NR-9)
    "lenet-w4n1": (4, 4, 4, 4, 1),  # iCEBreaker (iCE40UP5K)
}


def variant_layers(name: str = "lenet"):
    """The layers of :data:`VARIANTS` ``name`` (paper shifts, ReLU on every conv)."""
    if name not in VARIANTS:
        raise ValueError(f"network must be one of {sorted(VARIANTS)}, not {name!r}")
    widths = VARIANTS[name]
    if widths is None:
        return lenet_layers()
    paper = lenet_layers()
    layers, c, hw = [], 1, 28
    for spec, w in zip(paper, widths, strict=False):
        layers.append(replace(spec, in_ch=c, out_ch=w))
        c, hw = w, hw - 2
    layers.append(replace(paper[-1], in_ch=c * hw * hw))
    return layers


def random_export(arith: str = "bm", seed: int = 0, net: str = "lenet",
                  head: str = "bm15") -> NetworkExport:
    """The :data:`VARIANTS` network ``net`` with seeded random tensors and the classifier
    ``head`` (a :data:`model.params.NEURONS` name; a signed head needs ``arith="bm"``)."""
    if arith not in PRESET_OF:
        raise ValueError(f"arith must be one of {sorted(PRESET_OF)}, not {arith!r}")
    if head not in NEURONS:
        raise ValueError(f"head must be one of {', '.join(NEURONS)}, not {head!r}")
    if head != "bm15" and arith != "bm":
        raise ValueError(f"a {head!r} head is a BM classifier; the MAC network has none")
    preset = PRESET_OF[arith]
    p = PRESETS[preset]
    layers = variant_layers(net)
    if arith == "mac":  # the MAC datapath has no window-sum correction
        layers = [replace(s, c_shift=0) for s in layers]
    if head != "bm15":  # a signed head has no window-sum correction either
        layers[-1] = replace(layers[-1], neuron=head, c_shift=0)
    meta = {"random": True, "seed": seed, "network": net,
            "note": "structure-only stand-in, not trained"}
    if head != "bm15":
        meta["head"] = head
    return NetworkExport(preset=preset, params=p, layers=tuple(layers),
                         tensors=tuple(random_tensors(p, layers, seed)), metadata=meta)


def default_path(net: str = "lenet", arith: str = "bm", head: str = "bm15") -> Path:
    """``build/<net>_<arith>_random.npz``, with ``_<head>`` before ``_random`` for a signed
    head."""
    tag = "" if head == "bm15" else f"_{head}"
    return ROOT / "build" / f"{net}_{arith}{tag}_random.npz"


def write_random_export(path, arith: str = "bm", seed: int = 0, net: str = "lenet",
                        head: str = "bm15") -> Path:
    """Write :func:`random_export` to ``path`` unless an identical file is there already."""
    path = Path(path)
    exp = random_export(arith, seed, net, head)
    if path.exists():
        from model.export import load_export

        try:
            old = load_export(path)
            if old.meta() == exp.meta() and old.checksum:
                return path
        except ValueError:
            pass
    save_export(path, exp)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.random_export", description=__doc__.split(
        "\n")[0])
    ap.add_argument("--arith", choices=sorted(PRESET_OF), default="bm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--net", choices=sorted(VARIANTS), default="lenet")
    ap.add_argument("--head", choices=NEURONS, default="bm15",
                    help="the classifier's neuron (lns and bm2: BM only; default bm15)")
    ap.add_argument("--out", type=Path,
                    help="default build/<net>_<arith>_random.npz (<arith>_<head> for lns, bm2)")
    args = ap.parse_args(argv)
    try:
        exp = random_export(args.arith, args.seed, args.net, args.head)
    except ValueError as err:
        ap.error(str(err))
    out = args.out or default_path(args.net, args.arith, args.head)
    save_export(out, exp)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
