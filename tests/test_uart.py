"""The UART (hw/boards/uart.py) in amaranth's simulator: exact bit timing, loopback over divisors
and back-pressure, baud mismatch, framing errors, overruns and the constructor checks."""

from __future__ import annotations

import random

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from hw.boards.uart import MIN_DIVISOR, UARTRx, UARTTx, uart_divisor

SEED = 1234


def run(dut, *testbenches, processes=()):
    """Simulate until the ``testbenches`` return; ``processes`` run alongside as monitors."""
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for tb in testbenches:
        sim.add_testbench(tb)
    for p in processes:
        sim.add_process(p)
    sim.run()


def received(rx: UARTRx, testbench) -> list[int]:
    """The bytes ``rx`` presents (``o.valid``) while ``testbench`` drives its line."""
    got = []

    async def watch(ctx):
        async for _, _, valid, payload in ctx.tick().sample(rx.o.valid, rx.o.payload):
            if valid:
                got.append(payload)

    run(rx, testbench, processes=[watch])
    return got


def frame_bits(byte: int) -> list[int]:
    return [0] + [(byte >> k) & 1 for k in range(8)] + [1]


async def drive_line(ctx, line, bytes_, period: float, *, stop_bits=None):
    """Bit-bang ``bytes_`` onto ``line``; ``period`` may be fractional (baud mismatch)."""
    t = 0.0
    ticks = 0
    for n, b in enumerate(bytes_):
        bits = frame_bits(b)
        if stop_bits is not None:
            bits[-1] = stop_bits[n]
        for v in bits:
            ctx.set(line, v)
            t += period
            while ticks < round(t):
                await ctx.tick()
                ticks += 1
    ctx.set(line, 1)


@pytest.mark.parametrize("divisor", [MIN_DIVISOR, 7, 16])
def test_tx_bit_timing_exact(divisor):
    dut = UARTTx(divisor)
    data = [0x00, 0xFF, 0xA5, 0x5A, 0x01]
    seen = []

    async def tb(ctx):
        assert ctx.get(dut.tx) == 1
        for b in data:
            ctx.set(dut.i.payload, b)
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
            # The byte was taken on that edge; record the line for a whole frame from it.
            ctx.set(dut.i.valid, 0)
            line = [ctx.get(dut.tx)]
            for _ in range(dut.frame_cycles - 1):
                assert ctx.get(dut.i.ready) == 0
                await ctx.tick()
                line.append(ctx.get(dut.tx))
            seen.append(line)
            await ctx.tick()
            assert ctx.get(dut.i.ready) == 1

    run(dut, tb)
    for b, line in zip(data, seen, strict=True):
        want = [v for v in frame_bits(b) for _ in range(divisor)]
        assert line == want, f"byte {b:#04x}"


def test_tx_back_to_back_has_no_gap():
    divisor = 5
    dut = UARTTx(divisor)
    data = [0x12, 0x34, 0x56]
    line = []

    async def tb(ctx):
        ctx.set(dut.i.valid, 1)
        for b in data:
            ctx.set(dut.i.payload, b)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)
        for _ in range(dut.frame_cycles):
            await ctx.tick()

    async def watch(ctx):
        async for _, _, tx in ctx.tick().sample(dut.tx):
            line.append(tx)

    run(dut, tb, processes=[watch])
    start = line.index(0)
    want = [v for b in data for v in frame_bits(b) for _ in range(divisor)]
    assert line[start:start + len(want)] == want


def loopback(divisor: int):
    m = Module()
    m.submodules.tx = tx = UARTTx(divisor)
    m.submodules.rx = rx = UARTRx(divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    return m, tx, rx


@pytest.mark.parametrize("backpressure", [0.0, 0.5])
@pytest.mark.parametrize("divisor", [MIN_DIVISOR, 5, 13])
def test_loopback_random_bytes(divisor, backpressure):
    m, tx, rx = loopback(divisor)
    rng = random.Random(SEED + divisor)
    data = [rng.randrange(256) for _ in range(40)] + [0x00, 0xFF]
    got = []
    flags = []

    async def send(ctx):
        for b in data:
            ctx.set(tx.i.payload, b)
            ctx.set(tx.i.valid, 1)
            await ctx.tick().until(tx.i.ready)
            ctx.set(tx.i.valid, 0)
            for _ in range(rng.randrange(3)):
                await ctx.tick()

    async def recv(ctx):
        brng = random.Random(SEED)
        for _ in range(len(data) * 12 * divisor * 3):
            if len(got) == len(data):
                break
            ready = brng.random() >= backpressure
            ctx.set(rx.o.ready, ready)
            await ctx.tick()
        ctx.set(rx.o.ready, 0)

    async def watch(ctx):
        async for _, _, valid, ready, payload, ovr, ferr in ctx.tick().sample(
                rx.o.valid, rx.o.ready, rx.o.payload, rx.overrun, rx.frame_error):
            if valid and ready:
                got.append(payload)
            if ovr or ferr:
                flags.append((ovr, ferr))

    run(m, send, recv, processes=[watch])
    assert got == data
    assert flags == []


@pytest.mark.parametrize("mismatch", [-0.03, 0.03])
def test_rx_tolerates_baud_mismatch(mismatch):
    divisor = 16
    dut = UARTRx(divisor)
    data = [0x55, 0xAA, 0x00, 0xFF, 0x3C, 0x81]

    async def tb(ctx):
        ctx.set(dut.o.ready, 1)
        await ctx.tick().repeat(5)
        await drive_line(ctx, dut.rx, data, divisor * (1 + mismatch))
        await ctx.tick().repeat(4 * divisor)

    assert received(dut, tb) == data


def test_rx_ignores_glitch():
    divisor = 8
    dut = UARTRx(divisor)

    async def tb(ctx):
        ctx.set(dut.o.ready, 1)
        await ctx.tick().repeat(5)
        ctx.set(dut.rx, 0)  # a low pulse shorter than half a bit
        await ctx.tick().repeat(2)
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(3 * divisor)
        await drive_line(ctx, dut.rx, [0x42], divisor)
        await ctx.tick().repeat(2 * divisor)

    assert received(dut, tb) == [0x42]


def test_rx_frame_error_drops_byte_and_resyncs():
    divisor = 8
    dut = UARTRx(divisor)
    got, errors = [], []

    async def tb(ctx):
        ctx.set(dut.o.ready, 1)
        await ctx.tick().repeat(5)
        await drive_line(ctx, dut.rx, [0x99], divisor, stop_bits=[0])
        await ctx.tick().repeat(divisor)  # the line must go idle before the next frame
        await drive_line(ctx, dut.rx, [0x42], divisor)
        await ctx.tick().repeat(2 * divisor)

    async def watch(ctx):
        async for _, _, valid, payload, ferr in ctx.tick().sample(
                dut.o.valid, dut.o.payload, dut.frame_error):
            if valid:
                got.append(payload)
            if ferr:
                errors.append(1)

    run(dut, tb, processes=[watch])
    assert errors == [1]
    assert got == [0x42]


def test_rx_overrun_keeps_first_byte():
    divisor = 6
    dut = UARTRx(divisor)
    overruns = []

    async def tb(ctx):
        ctx.set(dut.o.ready, 0)
        await ctx.tick().repeat(3)
        await drive_line(ctx, dut.rx, [0x11, 0x22], divisor)
        await ctx.tick().repeat(2 * divisor)
        assert ctx.get(dut.o.valid) == 1
        assert ctx.get(dut.o.payload) == 0x11
        ctx.set(dut.o.ready, 1)
        await ctx.tick()
        ctx.set(dut.o.ready, 0)
        await ctx.tick()
        assert ctx.get(dut.o.valid) == 0

    async def watch(ctx):
        async for _, _, ovr in ctx.tick().sample(dut.overrun):
            if ovr:
                overruns.append(1)

    run(dut, tb, processes=[watch])
    assert overruns == [1]


@pytest.mark.parametrize("bad", [0, 3, -1, 4.0, True, None])
@pytest.mark.parametrize("cls", [UARTRx, UARTTx])
def test_divisor_checked(cls, bad):
    with pytest.raises(ValueError, match=f"divisor must be an int >= 4, not {bad!r}"):
        cls(bad)


def test_uart_divisor():
    assert uart_divisor(25e6, 115200) == 217
    assert uart_divisor(12e6, 115200) == 104
    assert uart_divisor(100e6, 3_000_000) == 33
    with pytest.raises(ValueError, match="too fast"):
        uart_divisor(12e6, 6_000_000)
    with pytest.raises(ValueError, match="off by"):
        uart_divisor(12e6, 2_500_000)  # 4.8 -> 5: 4 % slow
    with pytest.raises(ValueError, match="baud must be > 0, not 0"):
        uart_divisor(12e6, 0)
