"""Clock sweeps: ``python -m hw.build --board B --sweep 40,45,50``.

One full build per requested clock (through the family's PLL), each in its own work folder
``build/<board>-<MHz>MHz`` and output folder ``bitstreams/<board>-<MHz>MHz``. A clock whose
build misses timing is kept in the table with the Fmax nextpnr found. The table goes into
``sweep.md`` and ``sweep.json`` beside the board's build, and the highest clock that met timing
with :data:`MARGIN` to spare (Fmax at least ``1 + MARGIN`` times the clock) is published as the
board's build, its report naming the sweep. That clock is what a board's ``build_mhz`` should
be (:mod:`hw.boards.platforms`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from .build_report import publish
from .flowlog import parse_nextpnr_log

__all__ = ["MARGIN", "render_sweep", "run_sweep"]

MARGIN = 0.05  # the Fmax a chosen clock must leave to spare, as a fraction of the clock


def _fmax_of(workdir: Path) -> float | None:
    """The lowest Fmax in a build folder's nextpnr log, or None without one."""
    tim = workdir / "top.tim"
    if not tim.exists():
        return None
    fmax = parse_nextpnr_log(tim.read_text(errors="replace"))["fmax"]
    return min(v["fmax_mhz"] for v in fmax.values()) if fmax else None


def run_sweep(args, flow, *, root: Path) -> dict:
    """One ``flow.build(args)`` per clock of ``args.sweep``; returns the sweep record (see the
    module docstring) after publishing the chosen build with ``sweep.md`` and ``sweep.json``.
    ``flow`` is :mod:`hw.flow.build` (passed in, so that this module does not import it back)."""
    from ..boards.platforms import get_board

    build, BuildError, log = flow.build, flow.BuildError, flow.log
    board = get_board(args.board)
    work = (args.work_dir or root / "build" / board.name).resolve()
    out = (args.out_dir or root / "bitstreams" / board.name).resolve()
    points = []
    for mhz in args.sweep:
        a = copy.copy(args)
        a.freq, a.sweep = mhz, None
        a.work_dir = work.with_name(f"{work.name}-{mhz:g}MHz")
        a.out_dir = out.with_name(f"{out.name}-{mhz:g}MHz")
        log(f"hw.build: sweep point {mhz:g} MHz")
        try:
            rep = build(a)
        except BuildError as err:
            fmax = _fmax_of(a.work_dir)
            if fmax is None:  # not a timing verdict: the flow itself failed
                raise
            points.append({"asked_mhz": mhz, "clock_mhz": None, "fmax_mhz": fmax,
                           "timing_met": False, "note": str(err).splitlines()[0]})
            continue
        points.append({"asked_mhz": mhz, "clock_mhz": rep["clock_mhz"],
                       "fmax_mhz": rep["fmax_mhz"], "timing_met": rep["timing_met"],
                       "images_per_s": rep["images_per_s_at_requested"],
                       "cycles_per_image": rep["cycles_per_image"], "out_dir": str(a.out_dir)})
    good = [p for p in points
            if p["timing_met"] and p["fmax_mhz"] >= p["clock_mhz"] * (1 + MARGIN)]
    best = max(good, key=lambda p: p["clock_mhz"]) if good else None
    record = {"board": board.name, "margin": MARGIN, "points": points,
              "chosen_mhz": best["clock_mhz"] if best else None}
    files: dict = {}
    if best is not None:
        chosen = Path(best["out_dir"])
        files = {f.name: f for f in chosen.iterdir() if f.is_file()}
    files["sweep.json"] = json.dumps(record, indent=2) + "\n"
    files["sweep.md"] = render_sweep(record)
    publish(out, files)
    log(f"hw.build: sweep written to {out / 'sweep.md'}"
        + (f"; the {best['clock_mhz']:g} MHz build published there" if best else
           "; no clock met timing with the margin, nothing else published"))
    if best is None:
        raise BuildError(f"no clock of the sweep met timing with {MARGIN:.0%} margin")
    return record


def render_sweep(record: dict) -> str:
    lines = [f"# {record['board']}: clock sweep", "",
             f"One full build per clock. Chosen: the highest clock that met timing with "
             f"{record['margin']:.0%} of Fmax to spare: "
             + (f"**{record['chosen_mhz']:g} MHz**." if record["chosen_mhz"] else "none."), "",
             "| asked MHz | built MHz | Fmax MHz | timing | images/s at the clock built |",
             "|---:|---:|---:|---|---:|"]
    for p in record["points"]:
        built = f"{p['clock_mhz']:g}" if p["clock_mhz"] else "-"
        ips = f"{p['images_per_s']:,.0f}" if p.get("images_per_s") else "-"
        lines.append(f"| {p['asked_mhz']:g} | {built} | {p['fmax_mhz']:.2f} | "
                     f"{'met' if p['timing_met'] else 'MISSED'} | {ips} |")
    return "\n".join(lines) + "\n"
