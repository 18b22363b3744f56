"""Write the Verilog of one block: ``python -m hw.emit BLOCK --preset P --out DIR``.

Examples::

    python -m hw.emit log --preset bm8 --out build/v
    python -m hw.emit array --preset mac8 --rows 16 --cols 16 --out build/v
    python -m hw.emit --list

The file is ``DIR/<block>_<slug>.v`` with one top module named ``<block>``; stream ports become
``i__payload``, ``i__valid``, ``i__ready`` (and ``o__...``). Unknown blocks or presets, and blocks
that do not exist for the preset's arithmetic, exit non-zero with a message.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.params import PRESETS, BMParams

from ..blocks.array import DATAFLOWS
from ..blocks.util import check_count, check_params

__all__ = ["BLOCKS", "build_block", "emit_block", "main", "parse_args"]

# name -> (arithmetic it needs: "bm", "mac" or None for both, one-line description)
BLOCKS: dict[str, tuple[str | None, str]] = {
    "log": ("bm", "LogUnit: activation code -> {lx, zero}"),
    "exp": ("bm", "ExpUnit: {m, zero} -> saturating 2**(M/2**f)"),
    "pe": (None, "BMPE or MACPE, from the preset"),
    "bm_pe": ("bm", "BMPE: adder, comparator, max register"),
    "mac_pe": ("mac", "MACPE: multiplier, adder, accumulator"),
    "array": (None, "SystolicArray of BM or MAC PEs (--rows, --cols)"),
    "window_sum": (None, "WindowSum: adder tree + accumulator over a window (--lanes)"),
    "requant": (None, "Requant: correction, bias, rounding shift, saturation (--lanes)"),
    "maxpool": (None, "MaxPool: comparator over a pool window (--lanes)"),
}


def build_block(
    block: str,
    params,
    *,
    rows: int = 4,
    cols: int = 4,
    lanes: int = 1,
    max_fan_in: int = 5184,
    dataflow: str = "broadcast",
):
    """The Amaranth component for ``block`` (a key of :data:`BLOCKS`)."""
    if block not in BLOCKS:
        raise ValueError(f"unknown block {block!r}; known blocks: {', '.join(BLOCKS)}")
    # check before constructing: a component whose constructor fails is never used, and
    # amaranth warns about that
    check_params(params, block=block)
    for name, value in (
        ("rows", rows),
        ("cols", cols),
        ("lanes", lanes),
        ("max_fan_in", max_fan_in),
    ):
        check_count(name, value)
    if dataflow not in DATAFLOWS:
        raise ValueError(f"dataflow must be one of {DATAFLOWS}, not {dataflow!r}")
    need = BLOCKS[block][0]
    kind = "bm" if isinstance(params, BMParams) else "mac"
    if need is not None and need != kind:
        raise ValueError(f"block {block!r} needs a {need} preset, not a {kind} one")
    if block == "log":
        from ..blocks.logexp import LogUnit

        return LogUnit(params, lanes=lanes)
    if block == "exp":
        from ..blocks.logexp import ExpUnit

        return ExpUnit(params, lanes=lanes)
    if block in ("pe", "bm_pe", "mac_pe"):
        from ..blocks.pe import pe_class

        return pe_class(params)(params)
    if block == "array":
        from ..blocks.array import SystolicArray

        return SystolicArray(params, rows=rows, cols=cols, dataflow=dataflow)
    if block == "window_sum":
        from ..blocks.requant import WindowSum

        return WindowSum(params, lanes=lanes, max_fan_in=max_fan_in)
    if block == "requant":
        from ..blocks.requant import Requant

        return Requant(params, lanes=lanes, max_fan_in=max_fan_in)
    from ..blocks.requant import MaxPool

    return MaxPool(params, lanes=lanes)


def emit_block(block: str, params, out_dir, *, name: str | None = None, **kwargs) -> Path:
    """Write ``block``'s Verilog into ``out_dir``; returns the file's path."""
    from amaranth.back import verilog

    from .toolchain import setup_tool_env

    setup_tool_env()
    component = build_block(block, params, **kwargs)
    name = name or block
    text = verilog.convert(component, name=name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}_{params.slug}.v"
    path.write_text(text)
    return path


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m hw.emit", description=__doc__.splitlines()[0])
    ap.add_argument("block", nargs="?", help=f"one of: {', '.join(BLOCKS)}")
    ap.add_argument("--preset", default=None, help=f"one of: {', '.join(PRESETS)}")
    ap.add_argument("--out", default="build/verilog", help="output folder")
    ap.add_argument("--name", default=None, help="top module name (default: the block name)")
    ap.add_argument("--rows", type=int, default=4, help="array rows")
    ap.add_argument("--cols", type=int, default=4, help="array columns")
    ap.add_argument("--lanes", type=int, default=1, help="lanes of log/exp/requant/...")
    ap.add_argument("--max-fan-in", type=int, default=5184, help="window-sum bound")
    ap.add_argument(
        "--dataflow", default="broadcast", choices=["broadcast", "systolic"], help="array dataflow"
    )
    ap.add_argument("--list", action="store_true", help="list the blocks and presets")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        for b, (need, desc) in BLOCKS.items():
            print(f"{b:12s} {need or 'bm|mac':7s} {desc}")
        print("presets:", ", ".join(PRESETS))
        return 0
    if args.block is None:
        print("hw.emit: error: name a block (--list shows them)", file=sys.stderr)
        return 2
    if args.block not in BLOCKS:
        print(
            f"hw.emit: error: unknown block {args.block!r}; known blocks: {', '.join(BLOCKS)}",
            file=sys.stderr,
        )
        return 2
    if args.preset is None:
        args.preset = "mac8" if BLOCKS[args.block][0] == "mac" else "bm8"
    if args.preset not in PRESETS:
        print(
            f"hw.emit: error: unknown preset {args.preset!r}; known presets: {', '.join(PRESETS)}",
            file=sys.stderr,
        )
        return 2
    try:
        path = emit_block(
            args.block,
            PRESETS[args.preset],
            args.out,
            name=args.name,
            rows=args.rows,
            cols=args.cols,
            lanes=args.lanes,
            max_fan_in=args.max_fan_in,
            dataflow=args.dataflow,
        )
    except (ValueError, TypeError) as e:
        print(f"hw.emit: error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
