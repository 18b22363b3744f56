"""cocotb side, shared by every testbench: clock and reset, a stream driver and a stream monitor
with optional random stalls and back-pressure, and an in-order scoreboard.

Signals are sampled right after a rising edge (the values the flops saw) and driven in the same
delta, the cocotbext-axi convention. Stream ports follow Amaranth's Verilog names:
``<port>__payload``, ``<port>__valid``, ``<port>__ready``.
"""

from __future__ import annotations

import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

__all__ = ["params", "seed", "TB", "StreamDriver", "StreamMonitor", "Scoreboard", "pack", "unpack"]


def params() -> dict:
    """The params JSON the pytest entry handed over."""
    if "BM_SIM_PARAMS_FILE" in os.environ:
        with open(os.environ["BM_SIM_PARAMS_FILE"]) as f:
            return json.load(f)
    return json.loads(os.environ["BM_SIM_PARAMS"])


def seed() -> int:
    return int(os.environ.get("COCOTB_RANDOM_SEED", "12345"))


def pack(fields: list[tuple[str, int]], values: dict) -> int:
    """Pack ``values`` into an integer: ``fields`` are ``(name, width)``, LSB first."""
    word, shift = 0, 0
    for name, width in fields:
        word |= (int(values[name]) & ((1 << width) - 1)) << shift
        shift += width
    return word


def unpack(fields: list[tuple[str, int, bool]], word: int) -> dict:
    """Inverse of :func:`pack`; ``fields`` are ``(name, width, signed)``, LSB first."""
    out, shift = {}, 0
    for name, width, signed in fields:
        v = (word >> shift) & ((1 << width) - 1)
        if signed and v >> (width - 1):
            v -= 1 << width
        out[name] = v
        shift += width
    return out


class TB:
    """Clock, reset and the shared random generator of one testbench."""

    def __init__(self, dut, *, period_ns: int = 10):
        self.dut = dut
        self.rng = random.Random(seed())
        self.clk = dut.clk
        cocotb.start_soon(Clock(dut.clk, period_ns, unit="ns").start())

    async def reset(self, cycles: int = 2):
        self.dut.rst.value = 1
        await ClockCycles(self.clk, cycles)
        self.dut.rst.value = 0
        await RisingEdge(self.clk)


class StreamDriver:
    """Drives ``<port>__payload/valid`` and honours ``<port>__ready``.

    ``stall`` is the probability of an idle cycle before each item.
    """

    def __init__(self, dut, clk, port: str = "i", *, stall: float = 0.0, rng=None):
        self.clk = clk
        self.payload = getattr(dut, f"{port}__payload")
        self.valid = getattr(dut, f"{port}__valid")
        self.ready = getattr(dut, f"{port}__ready")
        self.stall = stall
        self.rng = rng or random.Random(seed())
        self.valid.value = 0
        self.first_taken_ns = None  # sim time of the edge that took the first item of a send

    async def send(self, items):
        from cocotb.utils import get_sim_time

        self.first_taken_ns = None
        for item in items:
            while self.stall and self.rng.random() < self.stall:
                self.valid.value = 0
                await RisingEdge(self.clk)
            self.payload.value = int(item)
            self.valid.value = 1
            while True:
                await RisingEdge(self.clk)
                if self.ready.value == 1:
                    break
            if self.first_taken_ns is None:
                self.first_taken_ns = get_sim_time("ns")
        self.valid.value = 0


class StreamMonitor:
    """Collects ``<port>__payload`` on every handshake; ``backpressure`` is the probability of
    holding ``<port>__ready`` low in a cycle."""

    def __init__(self, dut, clk, port: str = "o", *, backpressure: float = 0.0, rng=None,
                 signed: bool = False):
        self.clk = clk
        self.payload = getattr(dut, f"{port}__payload")
        self.valid = getattr(dut, f"{port}__valid")
        self.ready = getattr(dut, f"{port}__ready")
        self.backpressure = backpressure
        self.rng = rng or random.Random(seed() + 1)
        self.signed = signed
        self.items: list[int] = []
        self.ready.value = 0
        self._task = cocotb.start_soon(self._run())

    async def _run(self):
        while True:
            ready = not (self.backpressure and self.rng.random() < self.backpressure)
            self.ready.value = int(ready)
            await RisingEdge(self.clk)
            if self.valid.value == 1 and self.ready.value == 1:
                v = self.payload.value
                self.items.append(v.to_signed() if self.signed else v.to_unsigned())

    async def wait_for(self, n: int, *, timeout_cycles: int = 100_000):
        for _ in range(timeout_cycles):
            if len(self.items) >= n:
                return self.items[:n]
            await RisingEdge(self.clk)
        raise TimeoutError(f"got {len(self.items)} of {n} items after {timeout_cycles} cycles "
                           f"(seed {seed()})")


class Scoreboard:
    """In-order comparison. A mismatch names the first bad index, both values and the seed."""

    def __init__(self, name: str):
        self.name = name

    def compare(self, expected, actual, *, describe=None):
        expected, actual = list(expected), list(actual)
        for i, (e, a) in enumerate(zip(expected, actual, strict=False)):
            if e != a:
                where = f" ({describe(i)})" if describe else ""
                raise AssertionError(
                    f"{self.name}: first mismatch at index {i}{where}: expected {e!r}, "
                    f"got {a!r} (seed {seed()})")
        if len(expected) != len(actual):
            raise AssertionError(
                f"{self.name}: expected {len(expected)} items, got {len(actual)} (seed {seed()})")
