"""A feature-map bank in one iCE40 UltraPlus SPRAM (``SB_SPRAM256KA``: 16384 x 16 bits).

The SPRAM has one address for reads and writes. :class:`SPRAMBank` offers the read port and
write port that :class:`hw.accel.accelerator.Accelerator` uses for its banks and shares the address,
write first: a cycle with ``w.en`` writes ``w.data`` at ``w.addr``; any other cycle with ``r.en``
reads ``r.addr``. ``r.data`` is valid the cycle after a read and holds until the next read, like
an ``amaranth.lib.memory`` read port with ``transparent_for=()``. A read requested in the same
cycle as a write is lost (``r.data`` keeps its value): the accelerator never reads the buffer it
writes (ping-pong buffers, a layer starts when the previous one is written), so it never asks.

In simulation (no platform) the primitive is replaced by a model built from an
``amaranth.lib.memory`` memory with the same single shared address, so the sharing above is
what the tests check.

The SPRAM has no initial contents (it is not part of the bitstream), which suits the feature
maps and rules out the weights.
"""

from __future__ import annotations

from amaranth.hdl import ClockSignal, Const, Elaboratable, Instance, Module, Mux, Signal

__all__ = ["SPRAMBank", "SPRAM_DEPTH", "SPRAM_WIDTH", "spram_fits"]

SPRAM_DEPTH, SPRAM_WIDTH = 16384, 16


def spram_fits(width: int, depth: int) -> bool:
    return width <= SPRAM_WIDTH and depth <= SPRAM_DEPTH


class _Port:
    def __init__(self, width, depth_bits, name):
        self.addr = Signal(depth_bits, name=f"{name}_addr")
        self.data = Signal(width, name=f"{name}_data")
        self.en = Signal(name=f"{name}_en")


class SPRAMBank(Elaboratable):
    """``width`` x ``depth`` single-port RAM in one SB_SPRAM256KA; ports ``r`` and ``w``."""

    def __init__(self, width: int, depth: int):
        if not spram_fits(width, depth):
            raise ValueError(f"an SPRAM holds {SPRAM_DEPTH} x {SPRAM_WIDTH} bits, not "
                             f"{depth} x {width}")
        self.width, self.depth = width, depth
        bits = max(1, (depth - 1).bit_length())
        self.r = _Port(width, bits, "r")
        self.w = _Port(width, bits, "w")

    def elaborate(self, platform):
        m = Module()
        addr = Signal(14)
        dout = Signal(16)
        din = Signal(16)
        read = Signal()
        m.d.comb += [
            addr.eq(Mux(self.w.en, self.w.addr, self.r.addr)),
            din.eq(self.w.data),
            read.eq(self.r.en & ~self.w.en),
        ]
        if platform is None:
            # simulation: a model of the SPRAM (one address, registered read) from a memory
            from amaranth.lib.memory import Memory

            m.submodules.model = mem = Memory(shape=16, depth=self.depth, init=[])
            rp, wp = mem.read_port(), mem.write_port()
            m.d.comb += [rp.addr.eq(addr), rp.en.eq(read), dout.eq(rp.data),
                         wp.addr.eq(addr), wp.en.eq(self.w.en), wp.data.eq(din)]
        else:
            m.submodules.spram = Instance(
                "SB_SPRAM256KA",
                i_ADDRESS=addr, i_DATAIN=din, i_MASKWREN=Const(0b1111, 4), i_WREN=self.w.en,
                i_CHIPSELECT=self.w.en | read, i_CLOCK=ClockSignal(), i_STANDBY=0, i_SLEEP=0,
                i_POWEROFF=1, o_DATAOUT=dout)
        # hold the last read word while no new one arrives
        fresh = Signal()
        held = Signal(self.width)
        m.d.sync += fresh.eq(read)
        with m.If(fresh):
            m.d.sync += held.eq(dout[:self.width])
        m.d.comb += self.r.data.eq(Mux(fresh, dout[:self.width], held))
        return m
