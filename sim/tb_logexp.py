"""cocotb: the log and exp units, exhaustive over every input code, against the reference."""

import cocotb

from model.params import params_from_dict
from model.reference import ref_exp, ref_log
from sim.tb import TB, Scoreboard, StreamDriver, StreamMonitor, pack, params, unpack


def _setup(dut):
    cfg = params()
    p = params_from_dict(cfg["params"])
    tb = TB(dut)
    drv = StreamDriver(dut, tb.clk, "i", stall=cfg["stall"], rng=tb.rng)
    mon = StreamMonitor(dut, tb.clk, "o", backpressure=cfg["backpressure"])
    return cfg, p, tb, drv, mon


@cocotb.test()
async def log_unit_exhaustive(dut):
    cfg, p, tb, drv, mon = _setup(dut)
    await tb.reset()
    codes = list(range(p.a_max + 1))
    lx, zero = ref_log(p, codes)
    expected = [pack([("lx", p.lx_bits), ("zero", 1)], {"lx": a, "zero": b})
                for a, b in zip(lx.tolist(), zero.tolist(), strict=True)]
    await drv.send(codes)
    got = await mon.wait_for(len(codes))
    fields = [("lx", p.lx_bits, False), ("zero", 1, False)]
    Scoreboard("log unit").compare(
        expected, got, describe=lambda i: f"x={codes[i]}: want {unpack(fields, expected[i])}, "
                                          f"got {unpack(fields, got[i])}")


@cocotb.test()
async def exp_unit_exhaustive(dut):
    cfg, p, tb, drv, mon = _setup(dut)
    await tb.reset()
    lo, hi = -(1 << (p.m_bits - 1)), 1 << (p.m_bits - 1)
    # every M code with the flag clear, then a sample with the flag set
    inputs = [(m, 0) for m in range(lo, hi)] + [(m, 1) for m in range(lo, hi, 97)]
    words = [pack([("m", p.m_bits), ("zero", 1)], {"m": m, "zero": z}) for m, z in inputs]
    expected = ref_exp(p, [m for m, _ in inputs], [z for _, z in inputs]).tolist()
    await drv.send(words)
    got = await mon.wait_for(len(words))
    Scoreboard("exp unit").compare(expected, got, describe=lambda i: f"(M, zero)={inputs[i]}")
