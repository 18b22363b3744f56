"""BM against the multiply-accumulate baseline, measured: ``python -m hw.report``.

    python -m hw.report                 # the full report into reports/ (about 20 minutes)
    python -m hw.report --quick         # a small subset (a minute or two), e.g. for a test
    python -m hw.report --fresh         # ignore the per-block cache in reports/work/

Writes ``reports/report.md``, ``reports/report.json`` and PNG plots. BM and MAC are built from the
same generators (:mod:`hw.blocks.pe`, :mod:`hw.blocks.array`, :mod:`hw.accel.accelerator`) with the
same lanes and the same ``broadcast`` dataflow, at three levels: one processing element; the
systolic array alone and with its units (:class:`hw.reports.blocks.ArrayDatapath`); the whole
accelerator with memories and control. Every number comes from a tool run (:mod:`hw.reports.flow`):
generic gates and CMOS transistors from Yosys, ECP5/iCE40/Gowin/Xilinx resources from ``synth_*``,
Fmax from nextpnr.

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

from .flow import FLOWS, Job, measure, tool_versions
from .plots import plot_all
from .render import (  # noqa: F401 - render_markdown and ratio re-exported
    FAMILY_NAMES,
    GOAL_ECP5_ARRAY,
    GOAL_LANE_GATES,
    WIDTHS,
    ratio,
    render_markdown,
    unit_name,
    unit_order,
    units_of,
)

__all__ = ["plan_jobs", "summarise", "render_markdown", "main", "parse_args", "ratio"]

ROOT = Path(__file__).resolve().parents[2]


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
    from ..flow.build_report import git_commit

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
