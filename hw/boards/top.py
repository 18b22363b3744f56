"""Board top: a UART front end around a compute core, and the core factory.

Serial protocol (8N1, default 115200 baud; the same constants drive ``hw.boards.host``)
-------------------------------------------------------------------------------
Host to board: the sync byte ``0xA5``, then ``n_pixels`` (784) pixel codes, one byte each,
row-major. Bytes that arrive while the board waits for a sync byte are ignored.

Board to host, once the core has the last pixel: the reply byte ``0x5A``, the ``n_logits`` (10)
logits in class order as 4-byte little-endian two's-complement integers, then the class byte
(the index of the first maximal logit). That is ``2 + 4 * n_logits`` bytes (42).

This differs from "class first" on purpose: the logits stream straight from the core to the
transmitter while a running comparison keeps the best one, so the top needs no buffer for the
logits (320 flip-flops saved, which matters on the iCE40UP5K).

The host must wait for the reply before it sends the next image; bytes received while the reply
goes out are dropped. If the line goes quiet for ``timeout_bytes`` byte times in the middle of an
image, the top pads the image with zero pixels, throws the core's answer away (nothing is sent)
and waits for a new sync byte, so a host that died half-way cannot leave the board out of step.

LEDs (``leds``, 8 bits): ``[0:4]`` the class of the last image, ``4`` receiving an image, ``5``
waiting for or sending the answer, ``6`` sticky error (framing error, overrun or timeout), ``7``
heartbeat. Boards with fewer LEDs show the low bits (see ``hw.boards.platforms``).

The core contract
-----------------
A core is a ``wiring.Component`` with ``i: In(stream.Signature(unsigned(8)))`` (pixel codes,
row-major, ``n_pixels`` per image) and ``o: Out(stream.Signature(signed(32)))`` (``n_logits``
logits per image in class order), and the attributes ``n_pixels``, ``n_logits`` and
``cycles_per_image``. :func:`make_core` builds one: the accelerator
(``hw.accel.accelerator.Accelerator``) for real work, or :class:`FixtureCore`, a test fixture that
is not a neural network.
"""

from dataclasses import dataclass
from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .platforms import Board
from .uart import UARTRx, UARTTx

__all__ = [
    "SYNC",
    "REPLY",
    "BoardTop",
    "FixtureCore",
    "FixtureParams",
    "fixture_logits",
    "reply_length",
    "make_core",
    "CoreUnavailable",
    "CORE_KINDS",
]

SYNC = 0xA5
REPLY = 0x5A
LOGIT_BYTES = 4


def reply_length(n_logits: int) -> int:
    """Bytes in the board's answer: reply byte, logits, class byte."""
    return 1 + LOGIT_BYTES * n_logits + 1


class CoreUnavailable(RuntimeError):
    """The requested core cannot be built here (e.g. the accelerator is not written yet)."""


def _check_core(core):
    for name in ("i", "o", "n_pixels", "n_logits", "cycles_per_image"):
        if not hasattr(core, name):
            raise TypeError(f"core must have {name!r} (see hw.top's core contract), not {core!r}")
    if core.i.signature != stream.Signature(unsigned(8)).flip():
        raise TypeError(f"core.i must be In(stream.Signature(unsigned(8))), not {core.i.signature}")
    if core.o.signature != stream.Signature(signed(32)):
        raise TypeError(f"core.o must be Out(stream.Signature(signed(32))), not {core.o.signature}")
    return core


class BoardTop(wiring.Component):
    """UART in, core, UART out, LEDs: the protocol in this module's docstring.

    Parameters
    ----------
    core : wiring.Component
        The compute core (see the contract above); becomes submodule ``core``.
    divisor : int
        UART clock cycles per bit (:func:`hw.boards.uart.uart_divisor`).
    timeout_bytes : int
        Quiet byte times after which a half-received image is abandoned.
    heartbeat_bits : int
        LED 7 toggles every ``2**(heartbeat_bits - 1)`` cycles.

    Members
    -------
    rx : In(1)
        Serial line from the host.
    tx : Out(1)
        Serial line to the host.
    leds : Out(8)
        Status, see above.
    """

    rx: In(1, init=1)
    tx: Out(1, init=1)
    leds: Out(8)

    def __init__(self, core, *, divisor: int, timeout_bytes: int = 1000, heartbeat_bits: int = 24):
        self.core = _check_core(core)
        if not isinstance(timeout_bytes, int) or timeout_bytes < 2:
            raise ValueError(f"timeout_bytes must be an int >= 2, not {timeout_bytes!r}")
        if not isinstance(heartbeat_bits, int) or heartbeat_bits < 1:
            raise ValueError(f"heartbeat_bits must be an int >= 1, not {heartbeat_bits!r}")
        self.divisor = divisor
        self.timeout_cycles = timeout_bytes * 10 * divisor
        self.heartbeat_bits = heartbeat_bits
        super().__init__()

    @property
    def n_pixels(self) -> int:
        return self.core.n_pixels

    @property
    def n_logits(self) -> int:
        return self.core.n_logits

    def elaborate(self, platform):
        m = Module()
        core = self.core
        m.submodules.uart_rx = urx = UARTRx(self.divisor)
        m.submodules.uart_tx = utx = UARTTx(self.divisor)
        m.submodules.core = core
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]

        n_pix, n_log = core.n_pixels, core.n_logits
        w = SimpleNamespace(
            core=core, urx=urx, utx=utx, n_pix=n_pix, n_log=n_log,
            pix=Signal(range(n_pix), name="pix"),
            gap=Signal(range(self.timeout_cycles + 1), name="gap"),
            logit_idx=Signal(range(n_log + 1), name="logit_idx"),
            word=Signal(32, name="word"),
            byte_idx=Signal(range(LOGIT_BYTES), name="byte_idx"),
            have_word=Signal(name="have_word"),
            best=Signal(signed(32), name="best"),
            best_idx=Signal(range(max(n_log, 2)), name="best_idx"),
            cls=Signal(4, name="cls"),
            error=Signal(name="error"),
            receiving=Signal(name="receiving"),
            answering=Signal(name="answering"),
        )
        heartbeat = Signal(self.heartbeat_bits)

        m.d.sync += heartbeat.eq(heartbeat + 1)
        with m.If(urx.overrun | urx.frame_error):
            m.d.sync += w.error.eq(1)
        m.d.comb += self.leds.eq(w.cls | (w.receiving << 4) | (w.answering << 5)
                                 | (w.error << 6) | (heartbeat[-1] << 7))

        with m.FSM():
            self._receive_states(m, w)
            self._answer_states(m, w)
        return m

    def _receive_states(self, m, w):
        """START, SYNC, PIXELS and, after a timeout, FLUSH and DRAIN."""
        core, urx, pix, gap, n_pix = w.core, w.urx, w.pix, w.gap, w.n_pix
        with m.State("START"):
            # One cycle out of reset. The state register then always changes once, which
            # makes Icarus evaluate the FSM's combinational blocks (it skips them at time 0).
            m.next = "SYNC"
        with m.State("SYNC"):
            m.d.comb += urx.o.ready.eq(1)
            with m.If(urx.o.valid & (urx.o.payload == SYNC)):
                m.d.sync += [pix.eq(0), gap.eq(0)]
                m.next = "PIXELS"
        with m.State("PIXELS"):
            m.d.comb += [
                w.receiving.eq(1),
                core.i.valid.eq(urx.o.valid),
                core.i.payload.eq(urx.o.payload),
                urx.o.ready.eq(core.i.ready),
            ]
            with m.If(core.i.valid & core.i.ready):
                m.d.sync += [pix.eq(pix + 1), gap.eq(0)]
                with m.If(pix == n_pix - 1):
                    m.next = "REPLY"
            with m.Elif(gap == self.timeout_cycles):
                m.d.sync += w.error.eq(1)
                m.next = "FLUSH"
            with m.Else():
                m.d.sync += gap.eq(gap + 1)
        with m.State("FLUSH"):
            # pad the abandoned image with zeros so the core stays in step
            m.d.comb += [w.receiving.eq(1), core.i.valid.eq(1), urx.o.ready.eq(1)]
            with m.If(core.i.ready):
                m.d.sync += pix.eq(pix + 1)
                with m.If(pix == n_pix - 1):
                    m.d.sync += w.logit_idx.eq(0)
                    m.next = "DRAIN"
        with m.State("DRAIN"):
            m.d.comb += [w.answering.eq(1), urx.o.ready.eq(1), core.o.ready.eq(1)]
            with m.If(core.o.valid):
                m.d.sync += w.logit_idx.eq(w.logit_idx + 1)
                with m.If(w.logit_idx == w.n_log - 1):
                    m.next = "SYNC"

    @staticmethod
    def _send(m, w, payload):
        """Answer with one byte; the caller's ``m.If(utx.i.ready)`` moves on."""
        m.d.comb += [w.answering.eq(1), w.urx.o.ready.eq(1), w.utx.i.valid.eq(1),
                     w.utx.i.payload.eq(payload)]

    def _answer_states(self, m, w):
        """REPLY, LOGITS (four bytes each, tracking the largest) and CLASS."""
        core, urx, utx, logit_idx, byte_idx = w.core, w.urx, w.utx, w.logit_idx, w.byte_idx
        with m.State("REPLY"):
            self._send(m, w, REPLY)
            with m.If(utx.i.ready):
                m.d.sync += [logit_idx.eq(0), w.have_word.eq(0)]
                m.next = "LOGITS"
        with m.State("LOGITS"):
            m.d.comb += [w.answering.eq(1), urx.o.ready.eq(1)]
            with m.If(w.have_word):
                m.d.comb += [
                    utx.i.valid.eq(1),
                    # byte ``byte_idx``: a shift by ``byte_idx << 3`` (``word_select``
                    # would multiply the index by 8)
                    utx.i.payload.eq((w.word >> Cat(Const(0, 3), byte_idx))[:8]),
                ]
                with m.If(utx.i.ready):
                    m.d.sync += byte_idx.eq(byte_idx + 1)
                    with m.If(byte_idx == LOGIT_BYTES - 1):
                        m.d.sync += w.have_word.eq(0)
                        with m.If(logit_idx == w.n_log):
                            m.next = "CLASS"
            with m.Else():
                m.d.comb += core.o.ready.eq(1)
                with m.If(core.o.valid):
                    m.d.sync += [
                        w.word.eq(core.o.payload),
                        byte_idx.eq(0),
                        w.have_word.eq(1),
                        logit_idx.eq(logit_idx + 1),
                    ]
                    with m.If((logit_idx == 0) | (core.o.payload > w.best)):
                        m.d.sync += [w.best.eq(core.o.payload), w.best_idx.eq(logit_idx)]
        with m.State("CLASS"):
            self._send(m, w, w.best_idx)
            with m.If(utx.i.ready):
                m.d.sync += w.cls.eq(w.best_idx)
                m.next = "SYNC"


# -- the test fixture core ---------------------------------------------------------------------
def fixture_logits(pixels, n_logits: int = 10) -> list[int]:
    """Software model of :class:`FixtureCore`: ``S[k]`` is the sum of the pixels whose index is
    ``k`` modulo ``n_logits``; logit ``k`` is ``S[k] - S[(k + 1) % n_logits]``."""
    sums = [0] * n_logits
    for j, x in enumerate(pixels):
        sums[j % n_logits] += int(x)
    return [sums[k] - sums[(k + 1) % n_logits] for k in range(n_logits)]


@dataclass(frozen=True)
class FixtureParams:
    """Sizes of :class:`FixtureCore`."""

    n_pixels: int = 784
    n_logits: int = 10

    def __post_init__(self):
        if not isinstance(self.n_pixels, int) or self.n_pixels < 1:
            raise ValueError(f"n_pixels must be an int >= 1, not {self.n_pixels!r}")
        if not isinstance(self.n_logits, int) or not 2 <= self.n_logits <= 16:
            raise ValueError(f"n_logits must be an int in 2..16, not {self.n_logits!r}")

    @property
    def sum_bits(self) -> int:
        per_class = -(-self.n_pixels // self.n_logits)
        return (255 * per_class).bit_length()

    @property
    def align_cycles(self) -> int:
        """Idle rotations after the last pixel that bring class 0 to the front of the ring."""
        return (-self.n_pixels) % self.n_logits

    @property
    def cycles_per_image(self) -> int:
        """One cycle per pixel in, :attr:`align_cycles`, then one cycle per logit out."""
        return self.n_pixels + self.align_cycles + self.n_logits

    @property
    def slug(self) -> str:
        return f"fixture_p{self.n_pixels}_l{self.n_logits}"


class FixtureCore(wiring.Component):
    """TEST FIXTURE, not a neural network: a tiny core with the accelerator's interface.

    It exists so that the UART top, the board builds and their tests can run before the real
    accelerator (``hw.accel.accelerator``) exists. Its logits are :func:`fixture_logits` of the
    pixels: sums and one subtraction, exact (no overflow is possible at these widths).

    Parameters
    ----------
    params : FixtureParams

    Members
    -------
    i : In(stream.Signature(unsigned(8)))
        Pixel codes, ``n_pixels`` per image; taken one per cycle while not answering.
    o : Out(stream.Signature(signed(32)))
        ``n_logits`` logits per image, one per cycle (honours back-pressure).

    Latency: the first logit is valid :attr:`FixtureParams.align_cycles` cycles after the last
    pixel is taken; ``cycles_per_image`` is the whole-image figure with no stalls.
    """

    def __init__(self, params: FixtureParams | None = None):
        self.params = params or FixtureParams()
        super().__init__({
            "i": In(stream.Signature(unsigned(8))),
            "o": Out(stream.Signature(signed(32))),
        })

    n_pixels = property(lambda self: self.params.n_pixels)
    n_logits = property(lambda self: self.params.n_logits)
    cycles_per_image = property(lambda self: self.params.cycles_per_image)

    def elaborate(self, platform):
        # A ring of sums that rotates by one per pixel (and per logit out): every register
        # loads from a register, no indexed reads. The ring position that pixel j lands in is
        # j mod n_logits, counted from the position that was in front when the image began.
        m = Module()
        p = self.params
        n = p.n_logits
        ring = [Signal(p.sum_bits, name=f"sum{k}") for k in range(n)]
        j = Signal(range(p.n_pixels))
        align = Signal(range(max(p.align_cycles, 1) + 1))
        out = Signal(range(n))
        answering = Signal()

        def rotate(add=0):
            m.d.sync += [ring[k].eq(ring[k + 1]) for k in range(n - 1)]
            m.d.sync += ring[n - 1].eq(ring[0] + add)

        m.d.comb += [
            self.i.ready.eq(~answering),
            self.o.valid.eq(answering & (align == 0)),
            self.o.payload.eq(ring[0] - ring[1]),
        ]
        with m.If(self.i.valid & self.i.ready):
            rotate(self.i.payload)
            m.d.sync += j.eq(j + 1)
            with m.If(j == p.n_pixels - 1):
                m.d.sync += [j.eq(0), out.eq(0), answering.eq(1), align.eq(p.align_cycles)]
        with m.If(answering & (align != 0)):
            rotate()
            m.d.sync += align.eq(align - 1)
        with m.If(self.o.valid & self.o.ready):
            rotate()
            m.d.sync += out.eq(out + 1)
            with m.If(out == n - 1):
                m.d.sync += answering.eq(0)
                m.d.sync += [r.eq(0) for r in ring]
        return m


# -- the core factory --------------------------------------------------------------------------
CORE_KINDS = ("accel", "fixture")


def make_core(weights=None, arith: str = "bm", *, kind: str = "accel", rows: int = 16,
              cols: int = 16, overlap: bool = False):
    """Build the compute core for a board.

    ``kind="accel"`` loads the export ``weights`` (:func:`model.export.load_export`), checks that
    its arithmetic is ``arith`` and builds ``hw.accel.accelerator.Accelerator`` from it on a ``rows
    x cols`` systolic array (through its ``from_export`` classmethod when it has one, else
    ``Accelerator(export)``), pipelining images when ``overlap``
    (``hw.accel.plan.plan_network``). ``kind="fixture"`` builds the
    :class:`FixtureCore` test fixture and ignores ``weights``.
    """
    if kind == "fixture":
        return FixtureCore()
    if kind != "accel":
        raise ValueError(f"core kind must be one of {CORE_KINDS}, not {kind!r}")
    if arith not in ("bm", "mac"):
        raise ValueError(f"arith must be 'bm' or 'mac', not {arith!r}")
    from hw.accel.accelerator import Accelerator

    if weights is None:
        raise CoreUnavailable("no weights export given (--weights FILE.npz)")
    from model.export import load_export

    export = load_export(weights)
    if export.arith != arith:
        raise ValueError(f"{weights}: the export is {export.arith!r} arithmetic, not {arith!r}")
    return _check_core(Accelerator.from_export(export, rows=rows, cols=cols, overlap=overlap))


class PlatformTop:
    """Pins of ``board`` wired to a :class:`hw.boards.top.BoardTop`, clocked from the board clock
    or, with ``pll`` (:class:`hw.boards.pll.PLLSettings`), from the family's PLL."""

    def __new__(cls, board: Board, top, pll=None):
        from amaranth.hdl import ClockDomain, Elaboratable, Module
        from amaranth.lib import io

        from .pll import PLLDomain

        class _PlatformTop(Elaboratable):
            def elaborate(self, platform):
                m = Module()
                if pll is not None:  # else the platform makes ``sync`` from the board clock
                    m.domains.sync = ClockDomain("sync")
                    m.domains.por = ClockDomain("por", reset_less=True)
                    m.submodules.pll = PLLDomain(pll, platform.default_clk)
                m.submodules.top = top
                uart = platform.request("uart", 0, dir="-")
                m.submodules.uart_rx_buf = rx = io.Buffer("i", uart.rx)
                m.submodules.uart_tx_buf = tx = io.Buffer("o", uart.tx)
                m.d.comb += [top.rx.eq(rx.i), tx.o.eq(top.tx)]
                outs = []
                if board.uart_tx_enable:
                    outs.append(("uart_tx_enable", 0, 1))
                outs += [(name, idx, top.leds[bit]) for name, idx, bit in board.leds]
                for name, idx, value in outs:
                    buf = io.Buffer("o", platform.request(name, idx, dir="-"))
                    m.submodules[f"{name}{idx}_buf"] = buf
                    m.d.comb += buf.o.eq(value)
                return m

        return _PlatformTop()
