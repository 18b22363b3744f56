"""The BM-against-MAC report's PNG plots, from the summary :func:`hw.reports.report.summarise`
makes (matplotlib, imported only when plotting)."""

from __future__ import annotations

from pathlib import Path

from .render import FAMILY_NAMES, GOAL_ECP5_ARRAY, GOAL_LANE_GATES, WIDTHS, unit_name, unit_order

__all__ = ["plot_all"]


def plot_all(s: dict, out: Path) -> list[str]:
    """The report's PNG plots into ``out``; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = (_plot_width, _plot_lanes, _plot_breakdown, _plot_fom)
    return [f for f in (plot(plt, s, out) for plot in plots) if f]


def _save(plt, fig, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return name


def _series(pairs, key):
    """``(bits, BM/MAC ratio)`` points of ``key`` over width-labelled pairs."""
    pts = []
    for p in pairs:
        w = p["bm_name"].split("_")[1][2:]
        v = p["ratio"].get(key)
        if v is not None:
            pts.append((int(w), v))
    return sorted(pts)


def _plot_width(plt, s: dict, out: Path) -> str | None:
    """BM/MAC ratios against bit width."""
    sec = s["sections"]
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
        pts = _series(pairs, key)
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
    return _save(plt, fig, out, "ratio_vs_width.png")


def _plot_lanes(plt, s: dict, out: Path) -> str | None:
    """BM/MAC ratios against lanes, 8-bit."""
    sec = s["sections"]
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
    return _save(plt, fig, out, "ratio_vs_lanes.png")


def _plot_breakdown(plt, s: dict, out: Path) -> str | None:
    """Where the transistors of the array with its units go."""
    bd = s.get("breakdown")
    if not (bd and bd.get("bm")):
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for x, kind in ((0, "bm"), (1, "mac")):
        units = sorted(bd.get(kind) or {}, key=unit_order)
        bottom = 0
        for u in units:
            v = bd[kind][u]["transistors"]
            ax.bar(x, v, bottom=bottom, label=f"{kind.upper()}: {unit_name(u)}")
            bottom += v
    ax.set_xticks([0, 1], ["BM datapath", "MAC datapath"])
    ax.set_ylabel("CMOS transistors")
    ax.set_title("Array with its units: transistors per unit")
    ax.legend(fontsize=7)
    return _save(plt, fig, out, "breakdown.png")


def _plot_fom(plt, s: dict, out: Path) -> str | None:
    """The whole accelerator's figure of merit per family."""
    fom = s.get("figure_of_merit")
    if not fom:
        return None
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
    return _save(plt, fig, out, "fom.png")
