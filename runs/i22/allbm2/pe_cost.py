"""Issue 22, option (a): what a 2-branch PE would cost, in generic gates, beside the shipped
1.5-branch PE and the MAC PE (the gate flow of ``python -m hw.gates``). A sketch for the
decision, not a datapath: the 2-branch PE keeps two running maxima, ``max(Lx + Lw)`` over the
taps with a positive weight and over those with a negative one, the weight's sign bit choosing
which one a tap updates (the 1.5-branch design instead sums the window separately).

    python runs/i22/allbm2/pe_cost.py [--preset bm8f6]
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from amaranth.back import verilog  # noqa: E402
from amaranth.hdl import Module, Signal, signed  # noqa: E402
from amaranth.lib import wiring  # noqa: E402
from amaranth.lib.wiring import In, Out  # noqa: E402

from hw.blocks.logexp import branch_layout, log_layout  # noqa: E402
from hw.blocks.pe import BMPE, MACPE  # noqa: E402
from hw.flow.toolchain import setup_tool_env  # noqa: E402
from hw.reports.gates import count_gates  # noqa: E402
from model.params import PRESETS, MACParams  # noqa: E402


class BM2PE(wiring.Component):
    """Two max registers; ``neg`` (the weight's sign) picks the one a tap updates."""

    def __init__(self, p):
        super().__init__({
            "a": In(log_layout(p)), "b": In(signed(p.w_log_bits)), "neg": In(1),
            "first": In(1), "pos": Out(branch_layout(p)), "negacc": Out(branch_layout(p)),
        })

    def elaborate(self, platform):
        m = Module()
        s = self.a.lx + self.b
        for acc_out, mine in ((self.pos, ~self.neg), (self.negacc, self.neg)):
            acc = Signal(acc_out.shape(), reset_less=True)
            m.d.comb += acc_out.eq(acc)
            with m.If(self.first):  # both start over; the other one starts empty
                m.d.sync += [acc.m.eq(s), acc.zero.eq(self.a.zero | ~mine)]
            with m.Elif(mine & ~self.a.zero & (acc.zero | (s > acc.m))):
                m.d.sync += [acc.m.eq(s), acc.zero.eq(0)]
        return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="bm8f6")
    args = ap.parse_args()
    setup_tool_env()
    p = PRESETS[args.preset]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        pes = (("bm15_pe", BMPE(p)), ("bm2_pe", BM2PE(p)), ("mac_pe", MACPE(MACParams())))
        for name, comp in pes:
            path = Path(d) / f"{name}.v"
            path.write_text(verilog.convert(comp, name=name))
            g = count_gates(path, name)
            rows.append((name, g.gates, g.flops, g.transistors))
    base = rows[0][1] + rows[0][2]
    for name, gates, flops, tr in rows:
        print(f"{name:8s} gates {gates:5d}  flops {flops:3d}  transistors {tr:6d}  "
              f"gates+flops / 1.5-branch PE {(gates + flops) / base:.2f}")


if __name__ == "__main__":
    main()
