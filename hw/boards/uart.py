"""A small 8N1 UART: a receiver and a transmitter with stream ports.

Amaranth 0.5 ships no UART, so this is ours. Both halves count a fixed ``divisor``: the number of
clock cycles per bit, ``round(clk_hz / baud)`` (see :func:`uart_divisor`). Frames are one start
bit (0), eight data bits LSB first, one stop bit (1); the idle line is 1.
"""


from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UARTRx", "UARTTx", "uart_divisor", "MIN_DIVISOR"]

#: The receiver samples in the middle of a bit, so it needs a few cycles per bit.
MIN_DIVISOR = 4


def uart_divisor(clk_hz: float, baud: int, *, max_error: float = 0.02) -> int:
    """Clock cycles per bit for ``baud`` at ``clk_hz``.

    Raises ``ValueError`` if the rounded divisor is below :data:`MIN_DIVISOR` or misses the baud
    rate by more than ``max_error`` (2 %: a frame of 10 bits then drifts by a fifth of a bit).
    """
    if baud <= 0:
        raise ValueError(f"baud must be > 0, not {baud!r}")
    if clk_hz <= 0:
        raise ValueError(f"clk_hz must be > 0, not {clk_hz!r}")
    divisor = round(clk_hz / baud)
    if divisor < MIN_DIVISOR:
        raise ValueError(
            f"baud {baud} is too fast for a {clk_hz / 1e6:g} MHz clock "
            f"(divisor {divisor} < {MIN_DIVISOR})")
    error = abs(clk_hz / divisor - baud) / baud
    if error > max_error:
        raise ValueError(
            f"baud {baud} at {clk_hz / 1e6:g} MHz is off by {error:.1%} (divisor {divisor})")
    return divisor


def _check_divisor(component, divisor) -> int:
    if not isinstance(divisor, int) or isinstance(divisor, bool) or divisor < MIN_DIVISOR:
        component._MustUse__silence = True  # never built: no "created but never used" warning
        raise ValueError(f"divisor must be an int >= {MIN_DIVISOR}, not {divisor!r}")
    return divisor


class UARTTx(wiring.Component):
    """UART transmitter, 8N1.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (at least :data:`MIN_DIVISOR`).

    Members
    -------
    i : In(stream.Signature(unsigned(8)))
        Bytes to send. ``i.ready`` is high while the transmitter is idle and in the last cycle
        of a stop bit.
    tx : Out(1)
        The serial line, a register, idle high.

    Timing: the start bit begins on the cycle after ``i`` is taken; every bit lasts exactly
    ``divisor`` cycles; ``i.ready`` rises in the last cycle of the stop bit, so back-to-back bytes
    leave with no gap (:attr:`frame_cycles` cycles each).
    """

    i: In(stream.Signature(8))
    tx: Out(1, init=1)

    def __init__(self, divisor: int):
        self.divisor = _check_divisor(self, divisor)
        super().__init__()

    @property
    def frame_cycles(self) -> int:
        """Cycles per byte: 10 bits."""
        return 10 * self.divisor

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.divisor))
        shreg = Signal(9)  # data bits then the stop bit, sent from the LSB up
        bits = Signal(range(10))  # bits still to put on the line after the current one
        busy = Signal()

        last = Signal()  # the final cycle of the stop bit
        m.d.comb += [
            last.eq(busy & (timer == 0) & (bits == 0)),
            self.i.ready.eq(~busy | last),
        ]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [
                busy.eq(1),
                self.tx.eq(0),
                shreg.eq(Cat(self.i.payload, Const(1, 1))),
                bits.eq(9),
                timer.eq(self.divisor - 1),
            ]
        with m.Elif(last):
            m.d.sync += [busy.eq(0), self.tx.eq(1)]
        with m.Elif(busy & (timer != 0)):
            m.d.sync += timer.eq(timer - 1)
        with m.Elif(busy):
            m.d.sync += [
                self.tx.eq(shreg[0]),
                shreg.eq(shreg >> 1),
                bits.eq(bits - 1),
                timer.eq(self.divisor - 1),
            ]
        return m


class UARTRx(wiring.Component):
    """UART receiver, 8N1, with a one-byte output register.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, as for :class:`UARTTx`; the line is sampled in the middle of each
        bit.

    Members
    -------
    rx : In(1)
        The serial line (asynchronous: it goes through a two-flop synchroniser).
    o : Out(stream.Signature(unsigned(8)))
        Received bytes. A byte stays valid until taken.
    overrun : Out(1)
        One-cycle pulse: a byte arrived while the previous one was still not taken. The new byte
        is dropped and the old one kept.
    frame_error : Out(1)
        One-cycle pulse: the stop bit read 0. The byte is dropped and the receiver waits for the
        line to go idle (high) before it looks for the next start bit.

    Timing: a falling edge starts a frame; the start bit is checked half a bit later (a shorter
    low pulse is ignored as a glitch) and each data bit and the stop bit are sampled a whole bit
    after the previous sample, i.e. in the middle of the bit. The byte is valid about half a
    bit plus three cycles after the middle of the stop bit, so it tolerates a few per cent of
    baud-rate mismatch.
    """

    rx: In(1, init=1)
    o: Out(stream.Signature(8))
    overrun: Out(1)
    frame_error: Out(1)

    def __init__(self, divisor: int):
        self.divisor = _check_divisor(self, divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        line = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, line, init=1)

        timer = Signal(range(max(self.divisor, 2)))
        shreg = Signal(8)
        bit = Signal(range(8))

        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        with m.If(timer != 0):
            m.d.sync += timer.eq(timer - 1)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(self.divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    with m.If(line):
                        m.next = "IDLE"  # a glitch, not a start bit
                    with m.Else():
                        m.d.sync += [timer.eq(self.divisor - 1), bit.eq(0)]
                        m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [
                        shreg.eq(Cat(shreg[1:], line)),
                        bit.eq(bit + 1),
                        timer.eq(self.divisor - 1),
                    ]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer == 0):
                    with m.If(line):
                        with m.If(self.o.valid & ~self.o.ready):
                            m.d.comb += self.overrun.eq(1)
                        with m.Else():
                            m.d.sync += [self.o.payload.eq(shreg), self.o.valid.eq(1)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.comb += self.frame_error.eq(1)
                        m.next = "BREAK"
            with m.State("BREAK"):
                with m.If(line):
                    m.next = "IDLE"
        return m

