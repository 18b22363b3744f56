"""What the flow's tools report, read back: nextpnr's Fmax and utilisation, Yosys' cell
statistics, the multiplier cells among them, and each family's resource columns.

Used by the board builds (:mod:`hw.flow.build`), the clock sweep (:mod:`hw.flow.sweep`) and the
resource reports (:mod:`hw.reports.flow`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = ["CELL_PATTERNS", "LUT_EQUIVALENT", "MULTIPLIER_CELLS", "MultiplierFound",
           "assert_multiplier_free", "family_counts", "multiplier_cells", "parse_nextpnr_log",
           "stat_cells", "xilinx_capacity", "xilinx_utilization"]


_FMAX = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz \((PASS|FAIL) at "
                   r"([\d.]+) MHz\)")


_UTIL = re.compile(r"^Info:\s+(\S+):\s+(\d+)/\s*(\d+)\s+(\d+)%")


def parse_nextpnr_log(text: str) -> dict:
    """Fmax per clock (the last report, after routing) and the device utilisation table."""
    fmax = {}
    for clk, mhz, _verdict, target in _FMAX.findall(text):
        fmax[clk] = {"fmax_mhz": float(mhz), "target_mhz": float(target)}
    util = {}
    lines = text.splitlines()
    for k, line in enumerate(lines):
        if "Device utilisation" in line:
            util = {}
            for row in lines[k + 1:]:
                mo = _UTIL.match(row)
                if not mo:
                    break
                util[mo[1]] = {"used": int(mo[2]), "total": int(mo[3]), "percent": int(mo[4])}
    return {"fmax": fmax, "utilization": util}


XILINX_CELLS = {
    "LUT": re.compile(r"^LUT[1-6]$"),
    "CARRY4": re.compile(r"^CARRY4$"),
    "FF": re.compile(r"^FD[RSCP]E(_1)?$"),
    "RAMB36E1": re.compile(r"^RAMB36E1$"),
    "RAMB18E1": re.compile(r"^RAMB18E1$"),
    "DSP": re.compile(r"^DSP48E1$"),
    "LUTRAM": re.compile(r"^RAM(32|64|128|256)[XM]"),
    "MUXF": re.compile(r"^MUXF[78]$"),
}


def stat_cells(stat: dict) -> dict:
    mods = stat.get("modules", {})
    cells = {}
    for mod in mods.values():
        for typ, n in mod.get("num_cells_by_type", {}).items():
            cells[typ] = cells.get(typ, 0) + n
    if not cells:
        cells = dict(stat.get("design", {}).get("num_cells_by_type", {}))
    return cells


# Multiplier cells in a Yosys statistic: the coarse cells as the RTL has them before any mapping
# ($mul, $pow; $macc and the mappers' $__soft_mul / $__MUL* on the way), and the DSP
# primitives of the families built here: ECP5 MULT18X18D, MULT9X9D, ALU54B; iCE40 SB_MAC16;
# Gowin MULT*, ALU54D, PADD*; Xilinx DSP48E1
MULTIPLIER_CELLS = re.compile(
    r"\$(mul|pow|macc|macc_v2|__soft_mul|__MUL\w+)|MULT\w+|ALU54[BD]|PADD\w+|SB_MAC16|DSP48E1")


class MultiplierFound(AssertionError):
    """A design that must have no multiplier (the BM datapath) has one."""


def multiplier_cells(stat: dict) -> dict:
    """``{cell type: count}`` of the multiplier cells (:data:`MULTIPLIER_CELLS`) in Yosys
    ``stat -json`` output; a hierarchical statistic counts each module once."""
    return {t: n for t, n in sorted(stat_cells(stat).items())
            if n and MULTIPLIER_CELLS.fullmatch(t.lstrip("\\"))}


def assert_multiplier_free(stat: dict, what: str = "the design") -> None:
    """Raise :class:`MultiplierFound`, naming the cells, unless ``stat`` has no multiplier."""
    found = multiplier_cells(stat)
    if found:
        raise MultiplierFound(f"{what} is not multiplier-free: "
                              + ", ".join(f"{n} x {t}" for t, n in found.items()))


# what the Artix-7 parts of the Arty boards have (7 Series product table)
XILINX_DEVICES = {
    "xc7a35t": {"LUT": 20_800, "FF": 41_600, "BRAM": 50, "DSP": 90},
    "xc7a100t": {"LUT": 63_400, "FF": 126_800, "BRAM": 135, "DSP": 240},
}


def xilinx_utilization(stat: dict) -> dict:
    """LUT/CARRY4/FF/BRAM/DSP (and LUTRAM, MUXF) counts from Yosys ``stat -json``. ``BRAM`` is
    in 36 kbit blocks: a RAMB18E1 counts half."""
    cells = stat_cells(stat)
    out = {k: 0 for k in XILINX_CELLS}
    for typ, n in cells.items():
        for group, pat in XILINX_CELLS.items():
            if pat.match(typ.lstrip("\\$")):
                out[group] += n
    bram = out["RAMB36E1"] + out["RAMB18E1"] / 2
    out["BRAM"] = int(bram) if bram == int(bram) else bram
    out["cells_by_type"] = dict(sorted(cells.items()))
    return out


def xilinx_capacity(device: str) -> dict:
    """The part's LUT/FF/BRAM (36 kbit)/DSP totals, or ``{}`` for an unknown part."""
    dev = str(device or "").lower()
    return next((v for k, v in XILINX_DEVICES.items() if dev.startswith(k)), {})


def _count(cells: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return sum(n for t, n in cells.items() if rx.fullmatch(t.lstrip("\\$")))


CELL_PATTERNS = {
    "ecp5": {
        "LUT4": "LUT4",
        "CCU2C": "CCU2C",
        "PFUMX": "PFUMX|L6MUX21",
        "LUTRAM": "TRELLIS_DPR16X4|DPR16X4C",
        "FF": "TRELLIS_FF|FD1[PS]3\\w+",
        "BRAM": "DP16KD|PDPW16KD",
        "DSP": "MULT18X18D|MULT9X9D",
        "ALU54": "ALU54B",
    },
    "ice40": {
        "LUT4": "SB_LUT4",
        "CARRY": "SB_CARRY",
        "FF": "SB_DFF\\w*",
        "BRAM": "SB_RAM40_4K\\w*",
        "DSP": "SB_MAC16",
    },
    "gowin": {
        "LUT4": "LUT[1-4]",
        "ALU": "ALU",
        "MUX2": "MUX2_LUT[5-8]",
        "FF": "DFF\\w*",
        "BRAM": "(SDPB|DPB|SP|ROM|pROM)(X9)?",
        "LUTRAM": "RAM16S\\w+|RAM16SDP\\d",
        "DSP": "MULT\\w+|ALU54D|PADD\\w+",
    },
}
"""Yosys cell-type patterns of each family's resource columns (:func:`family_counts`)."""


LUT_EQUIVALENT = {
    # a CCU2C fills a slice's two LUTs; a LUT-RAM cell takes four
    "ecp5": lambda o: o["LUT4"] + 2 * o["CCU2C"] + 4 * o["LUTRAM"],
    "ice40": lambda o: o["LUT4"],
    "gowin": lambda o: o["LUT4"] + o["ALU"],
}


def family_counts(flow: str, cells: dict) -> dict:
    """The resource columns of one family from Yosys cell counts (``flow`` is ``ecp5*``,
    ``ice40``, ``gowin`` or ``xilinx``); ``LUT`` is the family's LUT equivalent."""
    fam = "ecp5" if flow.startswith("ecp5") else flow
    if fam not in CELL_PATTERNS:  # xilinx
        u = xilinx_utilization({"modules": {"m": {"num_cells_by_type": cells}}})
        return {k: v for k, v in u.items() if k != "cells_by_type"}
    out = {col: _count(cells, pat) for col, pat in CELL_PATTERNS[fam].items()}
    out["LUT"] = LUT_EQUIVALENT[fam](out)
    return out


def multipliers_of(workdir: Path) -> dict:
    """:func:`multiplier_cells` of the design as read (``rtl``) and as mapped (``mapped``), for
    each statistic the synthesis wrote."""
    out = {}
    for stage, name in (("rtl", "top.rtl_stat.json"), ("mapped", "top.stat.json")):
        if (workdir / name).exists():
            out[stage] = multiplier_cells(json.loads((workdir / name).read_text()))
    return out
