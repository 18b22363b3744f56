"""Board builds: ``python -m hw.build --board B`` turns a core into a bitstream and a report.

    python -m hw.build --list-boards
    python -m hw.build --board ulx3s [--variant 85F] [--weights F.npz] [--arith bm|mac]
                       [--freq MHZ] [--array RxC] [--baud N] [--core accel|fixture]
                       [--synth-only]

``--freq`` other than the board clock puts the family's PLL in front of the design
(:mod:`hw.boards.pll`); the design is constrained, checked and reported at the frequency the PLL
really makes. Each board has a default network and array (:mod:`hw.boards.platforms`); the small
boards cannot hold the paper LeNet and build a named, smaller variant.

Stages, each announced on stdout with its time: elaborate (amaranth: core + UART top + pins),
then the platform's own tool commands one by one (synthesis, place and route, packing), then the
report. The tools run in ``build/<board>/`` with relative paths and that folder as the working
directory (YoWASP tools cannot see the system temp folder by absolute path); each stage's output
goes to ``stage<N>-<tool>.log`` there.

Outputs, in ``bitstreams/<board>/`` (``--out-dir``), written to a temporary folder and renamed
into place only when the build succeeds: the bitstream, ``nextpnr.log``, ``report.json``,
``report.md`` (utilization, Fmax against the requested frequency, cycles per image, images/s at
Fmax) and ``config.json`` (the exact configuration: arguments, tools, versions, commit).

Every synthesis also writes the design's cells as read (``top.rtl_stat.json``) and as mapped
(``top.stat.json``); ``report.json`` lists their multiplier cells (``multipliers``:
:func:`multiplier_cells`, ``$mul`` as read, DSP blocks as mapped), and a BM accelerator with any
fails the build: its datapath has no multiplier. A ``--synth-only`` build reports the mapped
cell counts as its utilization.

Exit status: 0 on success; 1 when a tool fails or timing is missed at the requested frequency
(the build fails, nothing is published); 2 for a usage error (unknown board, bad option); 3 when
the Xilinx place-and-route tools or databases are missing (synthesis results are still published,
marked incomplete, and the message names each missing tool, its variable and the path it
expects).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..boards.platforms import BOARDS, get_board
from ..boards.pll import pll_settings
from ..boards.top import PlatformTop
from .build_report import git_commit, publish, render_markdown, report_head, versions
from .flowlog import (
    family_counts,
    multipliers_of,
    parse_nextpnr_log,
    stat_cells,
    xilinx_capacity,
    xilinx_utilization,
)
from .toolchain import setup_tool_env

__all__ = ["main", "parse_args", "default_weights", "BuildError", "build"]

ROOT = Path(__file__).resolve().parents[2]
EXIT_FAIL, EXIT_USAGE, EXIT_MISSING = 1, 2, 3

# tool variable -> what the stage does
STAGE_NAMES = {
    "YOSYS": "synthesis (yosys)",
    "NEXTPNR_ECP5": "place and route (nextpnr-ecp5)",
    "NEXTPNR_ICE40": "place and route (nextpnr-ice40)",
    "NEXTPNR_GOWIN": "place and route (nextpnr-himbaechel, gowin)",
    "NEXTPNR_XILINX": "place and route (nextpnr-xilinx)",
    "ECPPACK": "bitstream (ecppack)",
    "ICEPACK": "bitstream (icepack)",
    "GOWIN_PACK": "bitstream (gowin_pack)",
    "FASM2FRAMES": "frames (fasm2frames)",
    "XC7FRAMES2BIT": "bitstream (xc7frames2bit)",
}
XRAY_TOOLS = {"NEXTPNR_XILINX": "nextpnr-xilinx", "FASM2FRAMES": "fasm2frames",
              "XC7FRAMES2BIT": "xc7frames2bit"}


class BuildError(Exception):
    """A build failed; ``code`` is the exit status."""

    def __init__(self, msg: str, code: int = EXIT_FAIL):
        super().__init__(msg)
        self.code = code


def default_weights(arith: str, network: str = "lenet") -> Path:
    """The shipped export for ``arith``: the paper LeNet as 1.5-BM hard max, or its int8 MAC
    baseline (``model/weights/lenet_bm15_max.npz``, ``model/weights/lenet_mac8.npz``); for a
    board-sized variant ``network`` (``hw.boards.platforms``),
    ``model/weights/<network>_bm15_max.npz`` and ``<network>_mac8.npz``."""
    suffix = {"bm": "bm15_max", "mac": "mac8"}.get(arith, arith)
    return ROOT / "model" / "weights" / f"{network}_{suffix}.npz"


def log(msg: str) -> None:
    print(msg, flush=True)


# -- the design --------------------------------------------------------------------------------


# -- running the platform's commands stage by stage --------------------------------------------
def _split_script(script: str) -> tuple[list[str], list[str]]:
    """amaranth's ``build_top.sh`` -> (prelude lines, one command line per tool run)."""
    prelude, commands = [], []
    for line in script.splitlines():
        if line.startswith('"'):
            commands.append(line)
        elif line.strip() and not line.startswith("#!"):
            prelude.append(line)
    return prelude, commands


def _tool_var(command: str) -> str:
    """``"$NEXTPNR_ECP5" ...`` -> ``NEXTPNR_ECP5`` (a literal path gives its upper-cased name)."""
    exe = command[1:].split('"', 1)[0]
    return exe[1:] if exe.startswith("$") else Path(exe).name.upper().replace("-", "_")


def _gowin_shim(workdir: Path) -> Path:
    shim = workdir / "nextpnr-gowin"
    shim.write_text(
        "#!/bin/sh\n# legacy nextpnr-gowin -> nextpnr-himbaechel, see hw/flow/nextpnr_gowin.py\n"
        f'PYTHONPATH="{ROOT}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{sys.executable}" '
        '-m hw.flow.nextpnr_gowin "$@"\n')
    shim.chmod(0o755)
    return shim


def _run_stage(workdir: Path, prelude, command: str, idx: int, env: dict) -> Path:
    var = _tool_var(command)
    name = STAGE_NAMES.get(var, var.lower())
    script = workdir / f"stage{idx}.sh"
    script.write_text("\n".join(["#!/bin/sh", *prelude, command, ""]))
    logf = workdir / f"stage{idx}-{var.lower()}.log"
    log(f"  [{idx}] {name} ...")
    t0 = time.monotonic()
    with open(logf, "w") as fh:
        proc = subprocess.run(["sh", script.name], cwd=workdir, env=env, stdout=fh,
                              stderr=subprocess.STDOUT)
    dt = time.monotonic() - t0
    rpt = workdir / "top.rpt"  # amaranth runs ``yosys -q -l top.rpt``: the log is there
    if var == "YOSYS" and rpt.exists() and rpt.stat().st_mtime >= time.time() - dt - 1:
        with open(logf, "a") as fh, open(rpt, errors="replace") as src:
            shutil.copyfileobj(src, fh)
    if proc.returncode != 0:
        tail = "\n".join(logf.read_text(errors="replace").splitlines()[-25:])
        raise BuildError(f"{name} failed (exit {proc.returncode}) after {dt:.1f} s; "
                         f"log: {logf}\n{tail}")
    log(f"      done in {dt:.1f} s")
    return logf


def _missing_xray(platform, env: dict) -> list[str]:
    missing = []
    for var, name in XRAY_TOOLS.items():
        exe = env.get(var, name)
        if not shutil.which(exe, path=env.get("PATH")):
            missing.append(f"tool {name!r} not found (set ${var} or put {name} on PATH)")
    chipdb_dir = env.get("CHIPDB_DIR", "/usr/share/nextpnr/xilinx-chipdb")
    db_dir = env.get("DB_DIR", "/usr/share/nextpnr/prjxray-db")
    chipdb = Path(chipdb_dir) / platform.xray_chipdb_name
    part_yaml = Path(db_dir) / platform._xray_family / platform._xray_part / "part.yaml"
    if not chipdb.is_file():
        missing.append(f"chip database {chipdb} not found (set $CHIPDB_DIR, and $XRAY_CHIPDB "
                       f"for another file name)")
    if not part_yaml.is_file():
        missing.append(f"prjxray database {part_yaml} not found (set $DB_DIR to the "
                       f"prjxray-db root)")
    return missing


# -- the command line --------------------------------------------------------------------------
def _array_arg(text: str) -> tuple[int, int]:
    try:
        r, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected ROWSxCOLS, e.g. 16x16, not {text!r}") from None
    return r, c


def _mhz_list(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        vals = []
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected clocks in MHz, e.g. 40,45,50, not {text!r}")
    return vals


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m hw.build", description=__doc__.split("\n")[0])
    ap.add_argument("--board", help="board to build for (see --list-boards)")
    ap.add_argument("--variant", help="device variant, e.g. 85F/45F/25F/12F for ulx3s, "
                                      "35T/100T for arty_a7")
    ap.add_argument("--weights", type=Path,
                    help="weights export (.npz); default model/weights/<network>_bm15_max.npz or "
                         "<network>_mac8.npz, <network> being the board's (lenet for ulx3s)")
    ap.add_argument("--arith", choices=("bm", "mac"), default="bm")
    ap.add_argument("--freq", type=float,
                    help="requested clock in MHz (default: the board's build clock, see "
                         "--list-boards)")
    ap.add_argument("--baud", type=int, default=115200)
    ap.add_argument("--core", choices=("accel", "fixture"), default="accel",
                    help="accel: the accelerator; fixture: the small test fixture core")
    ap.add_argument("--array", type=_array_arg, metavar="RxC",
                    help="systolic array rows x cols of the accelerator (default: the board's)")
    ap.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=None,
                    help="pipeline images: the classifier on its own engine beside the next "
                         "image's convolutions (default: the board's; on for ulx3s and arty_a7)")
    ap.add_argument("--synth-opts", default="", metavar="OPTS",
                    help="extra options for the Yosys synth_<family> command, after the board's "
                         "(e.g. -nolutram to step around a Yosys bug)")
    ap.add_argument("--synth-only", action="store_true", help="stop after synthesis")
    ap.add_argument("--sweep", type=_mhz_list, metavar="MHZ,MHZ,...",
                    help="one full build per clock; the table into sweep.md, the highest clock "
                         "that met timing with margin published (hw.flow.sweep)")
    ap.add_argument("--list-boards", action="store_true")
    ap.add_argument("--out-dir", type=Path, help="default bitstreams/<board>")
    ap.add_argument("--work-dir", type=Path, help="default build/<board>")
    return ap.parse_args(argv)


def list_boards() -> str:
    rows = []
    for b in BOARDS.values():
        variants = ", ".join(f"{v}{' (default)' if v == b.default_variant else ''}"
                             for v in b.variants)
        rows.append(f"  {b.name:16s} {b.description}; variants: {variants}; "
                    f"clock {b.clk_mhz:g} MHz"
                    + (f", built at {b.build_mhz:g} MHz" if b.build_mhz else ""))
    return "boards:\n" + "\n".join(rows)


def _clock(args, board, platform):
    """``(requested MHz, PLL settings or None)``: the board clock, or a PLL in front of it."""
    requested = args.freq if args.freq is not None else board.default_mhz
    if abs(requested - board.clk_mhz) <= 1e-6:
        return requested, None
    if board.family == "xilinx":
        raise BuildError(f"--freq {requested:g}: no PLL support for {board.name} yet; ask "
                         f"for --freq {board.clk_mhz:g}", EXIT_USAGE)
    try:
        return requested, pll_settings(board.family, board.clk_mhz, requested,
                                       device=getattr(platform, "_chipdb_device", None))
    except ValueError as err:
        raise BuildError(f"--freq {requested:g}: {err}", EXIT_USAGE) from None


def _check_tools(args, board, platform, env) -> list[str]:
    """The missing openXC7 tools, named before anything runs: without them the flow stops
    after synthesis."""
    if board.family != "xilinx" or args.synth_only:
        return []
    missing = _missing_xray(platform, env)
    if missing:
        log("  the openXC7 place-and-route tools are missing:")
        for m in missing:
            log(f"    - {m}")
        log("  running synthesis only: the report is published marked incomplete, and the "
            "build then fails (no bitstream)")
    return missing


def _synthesis_results(rep: dict, products: dict, board, device, workdir: Path) -> None:
    """A synthesis-only build's utilization from Yosys ``stat``."""
    stat_path = workdir / "top.stat.json"
    if board.family == "xilinx":
        util = xilinx_utilization(json.loads(stat_path.read_text()))
        rep["cells_by_type"] = util.pop("cells_by_type")
        rep["utilization"] = util
        rep["capacity"] = xilinx_capacity(device)
        products["top.json"] = workdir / "top.json"
        products["top.stat.json"] = stat_path
    elif stat_path.exists():
        cells = stat_cells(json.loads(stat_path.read_text()))
        rep["utilization"] = family_counts(board.family, cells)
        rep["cells_by_type"] = dict(sorted(cells.items()))
        products["top.stat.json"] = stat_path


def _pnr_results(rep: dict, products: dict, board, workdir: Path, freq: float, core) -> None:
    """Fmax and utilization from the nextpnr log; a missed clock fails the build."""
    tim = workdir / "top.tim"
    parsed = parse_nextpnr_log(tim.read_text(errors="replace") if tim.exists() else "")
    if not parsed["fmax"]:
        raise BuildError(f"no 'Max frequency' line in the nextpnr log {tim}")
    fmax = min(v["fmax_mhz"] for v in parsed["fmax"].values())
    rep.update({
        "fmax_mhz": fmax,
        "fmax_by_clock": parsed["fmax"],
        "timing_met": fmax >= freq,
        "clock_mhz": freq,  # the clock the design runs at (the PLL's output)
        "utilization": parsed["utilization"],
        "images_per_s_at_fmax": fmax * 1e6 / core.cycles_per_image,
        "images_per_s_at_requested": freq * 1e6 / core.cycles_per_image,
    })
    if not rep["timing_met"]:
        raise BuildError(
            f"timing MISSED: Fmax {fmax:.2f} MHz < requested {freq:g} MHz "
            f"(nothing published; log: {tim})")
    bit = workdir / f"top.{board.bitstream}"
    if not bit.exists():
        raise BuildError(f"the flow finished but {bit} is missing")
    products[f"{board.name}.{board.bitstream}"] = bit
    products["nextpnr.log"] = tim


def _config(args, env) -> dict:
    """How the build was made: the command, its arguments, the tools and their versions."""
    return {
        "command": "python -m hw.build " + " ".join(sys.argv[1:] if args.argv is None
                                                    else args.argv),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                 if k != "argv"},
        "tools": {k: env.get(k) for k in ("YOSYS", "NEXTPNR_ECP5", "ECPPACK", "NEXTPNR_ICE40",
                                          "ICEPACK", "NEXTPNR_GOWIN", "NEXTPNR_HIMBAECHEL",
                                          *XRAY_TOOLS) if env.get(k)},
        "versions": versions(),
        "git": git_commit(),
    }


def _flow_overrides(args, board, freq: float) -> dict:
    """The toolchain options of the amaranth build plan."""
    overrides = {}
    if board.family != "xilinx":
        overrides["nextpnr_opts"] = f"--timing-allow-fail --freq {freq:g}"
    else:
        overrides["nextpnr_opts"] = "--timing-allow-fail"
    synth_opts = " ".join(o for o in (board.extra.get("synth_opts", ""), args.synth_opts) if o)
    if synth_opts:
        overrides["synth_opts"] = synth_opts
    if board.family != "xilinx":  # (the Xilinx script in hw.boards writes both itself)
        # the cells as read (before any mapping: the multiplier check) and as mapped
        overrides["script_after_read"] = "tee -q -o top.rtl_stat.json stat -json"
        overrides["script_after_synth"] = "tee -q -o top.stat.json stat -json"
    return overrides


def _require_multiplier_free(multipliers: dict) -> None:
    """A BM build fails on any multiplier cell, as read or as mapped."""
    for stage, cells in multipliers.items():
        if cells:
            raise BuildError(f"the BM core is not multiplier-free: {stage} cells "
                             + ", ".join(f"{n} x {t}" for t, n in cells.items()))


def build(args) -> dict:
    from ..boards.top import BoardTop, CoreUnavailable, make_core
    from ..boards.uart import uart_divisor

    t_start = time.monotonic()
    setup_tool_env()  # amaranth's own Verilog output needs $YOSYS too
    board = get_board(args.board)
    variant = args.variant or board.default_variant
    platform = board.platform(variant)
    if board.extra.get("break_off_pmod"):
        platform.add_resources(platform.break_off_pmod)
    requested, pll = _clock(args, board, platform)
    freq = pll.f_out if pll else requested  # the clock the design really gets
    weights = args.weights or (default_weights(args.arith, board.network)
                               if args.core == "accel" else None)
    if weights is not None and not Path(weights).exists():
        raise BuildError(
            f"no weights export at {weights} ({board.name} builds the {board.network!r} network "
            f"by default); pass --weights FILE.npz, or for a structure-only stand-in with random "
            f"weights: python -m sim.random_export --net {board.network} --arith {args.arith}",
            EXIT_USAGE)
    workdir = (args.work_dir or ROOT / "build" / board.name).resolve()
    out_dir = (args.out_dir or ROOT / "bitstreams" / board.name).resolve()
    stages = "synthesis only" if args.synth_only else "full flow"
    device = getattr(platform, "device", None) or getattr(platform, "part", None)
    clock = (f"{freq:g} MHz from the {board.clk_mhz:g} MHz board clock by PLL "
             f"({', '.join(f'{k}={v}' for k, v in pll.params.items())})" if pll
             else f"{freq:g} MHz (board clock)")
    log(f"hw.build: {board.name} {variant} ({device}), {args.core} core, {clock}, {stages}")
    log(f"  work dir: {workdir}")
    env = setup_tool_env(dict(os.environ))
    missing = _check_tools(args, board, platform, env)

    log("  [0] elaborate (amaranth: core, UART top, pins) ...")
    t0 = time.monotonic()
    try:
        rows, cols = args.array or board.array
        overlap = board.overlap if args.overlap is None else args.overlap
        core = make_core(weights, args.arith, kind=args.core, rows=rows, cols=cols,
                         overlap=overlap)
    except CoreUnavailable as err:
        raise BuildError(str(err), EXIT_USAGE) from None
    divisor = uart_divisor(freq * 1e6, args.baud)
    top = BoardTop(core, divisor=divisor)
    plan = platform.prepare(PlatformTop(board, top, pll), "top",
                            **_flow_overrides(args, board, freq))
    shutil.rmtree(workdir, ignore_errors=True)
    plan.extract(workdir)
    log(f"      done in {time.monotonic() - t0:.1f} s")

    if board.family == "gowin":
        env["NEXTPNR_GOWIN"] = str(_gowin_shim(workdir))
    script = plan.files[f"{plan.script}.sh"]
    prelude, commands = _split_script(script)

    if args.synth_only or missing:
        commands = commands[:1]
    logs = []
    for idx, command in enumerate(commands, start=1):
        logs.append(_run_stage(workdir, prelude, command, idx, env))

    # -- report ---------------------------------------------------------------------------
    rep = report_head(args, board, platform, variant, core, weights, (rows, cols),
                       (requested, freq, pll), divisor)
    products = {}
    rep["multipliers"] = multipliers_of(workdir)
    if args.core == "accel" and args.arith == "bm":
        _require_multiplier_free(rep["multipliers"])
    if args.synth_only or missing:
        rep["status"] = "synthesis only" if args.synth_only else "incomplete: tools missing"
        _synthesis_results(rep, products, board, device, workdir)
        products["yosys.log"] = logs[0]
        rep["missing"] = missing
        rep["fmax_mhz"] = None
    else:
        _pnr_results(rep, products, board, workdir, freq, core)
    rep["elapsed_s"] = round(time.monotonic() - t_start, 1)
    rep["config"] = _config(args, env)
    products["report.json"] = json.dumps(rep, indent=2) + "\n"
    products["report.md"] = render_markdown(rep)
    products["config.json"] = json.dumps(rep["config"], indent=2) + "\n"
    log("  [*] report ...")
    publish(out_dir, products)
    log(f"      wrote {out_dir}: {', '.join(products)}")
    if missing:
        raise BuildError(
            "cannot make a bitstream: the openXC7 place-and-route tools are missing.\n"
            + "\n".join(f"  - {m}" for m in missing)
            + f"\nsynthesis results were written to {out_dir} (status: incomplete)",
            EXIT_MISSING)
    return rep


def main(argv=None) -> int:
    args = parse_args(argv)
    args.argv = argv
    if args.list_boards:
        log(list_boards())
        return 0
    if not args.board:
        print("hw.build: --board is required\n" + list_boards(), file=sys.stderr)
        return EXIT_USAGE
    if args.board not in BOARDS:
        print(f"hw.build: unknown board {args.board!r}\n" + list_boards(), file=sys.stderr)
        return EXIT_USAGE
    if args.sweep and (args.freq is not None or args.synth_only):
        print("hw.build: --sweep takes neither --freq nor --synth-only", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.sweep:
            from .sweep import run_sweep

            run_sweep(args, sys.modules[__name__], root=ROOT)
            return 0
        rep = build(args)
    except BuildError as err:
        print(f"hw.build: FAILED: {err}", file=sys.stderr)
        return err.code
    except ValueError as err:
        print(f"hw.build: {err}", file=sys.stderr)
        return EXIT_USAGE
    if rep.get("fmax_mhz") is not None:
        log(f"hw.build: OK: {rep['images_per_s_at_requested']:,.0f} images/s at the clock built "
            f"({rep['clock_mhz']:g} MHz; Fmax {rep['fmax_mhz']:.2f} MHz)")
    else:
        log(f"hw.build: OK: {rep['status']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
