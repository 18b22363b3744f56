"""Every ``python -m model.*`` command fails on bad input in one line, exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from model.cli import run

ROOT = Path(__file__).resolve().parent.parent


def test_run_reports_bad_input_in_one_line(capsys):
    def missing(argv):
        open("/nonexistent/model.pt", "rb")

    def refused(argv):
        raise ValueError("--epochs must be >= 1")

    assert run("tool", missing) == 2
    assert capsys.readouterr().err == "tool: /nonexistent/model.pt: No such file or directory\n"
    assert run("tool", refused) == 2
    assert capsys.readouterr().err == "tool: --epochs must be >= 1\n"
    assert run("tool", lambda argv: {"accuracy": 1.0}) == 0
    assert run("tool", lambda argv: 3) == 3


def test_run_keeps_the_traceback_of_a_bug():
    def bug(argv):
        raise KeyError("oops")

    with pytest.raises(KeyError):
        run("tool", bug)


@pytest.mark.parametrize("case", ["missing", "corrupt", "text"])
def test_quantize_bad_checkpoint(tmp_path, case):
    ck = tmp_path / "model.pt"
    if case == "corrupt":
        ck.write_bytes((ROOT / "runs/lenet_classical/model.pt").read_bytes()[:500])
    elif case == "text":  # not a zip: torch's legacy loader reads it as a pickle header
        ck.write_text("garbage\n")
    out = tmp_path / "x.npz"
    r = subprocess.run(
        [sys.executable, "-m", "model.quantize", "--checkpoint", str(ck), "--out", str(out),
         "--arith", "mac"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"model.quantize: {ck}"), r.stderr
    assert ("No such file" if case == "missing" else "not a readable checkpoint") in lines[0]
    assert not out.exists()
