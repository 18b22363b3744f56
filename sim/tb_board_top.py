"""cocotb: the board top end to end on its serial pins. Bytes go in on ``rx`` and the answers
are decoded from ``tx`` and checked against the expected logits the pytest side computed
(:func:`hw.boards.top.fixture_logits` for the fixture core, :mod:`model.reference` for the
accelerator).
"""

import cocotb
from cocotb.triggers import ClockCycles, FallingEdge, RisingEdge

from hw.boards.top import REPLY, SYNC, reply_length
from sim.tb import TB, Scoreboard, params


class UartSource:
    """Bit-bangs 8N1 bytes onto ``line``, ``divisor`` clock cycles per bit."""

    def __init__(self, clk, line, divisor: int):
        self.clk, self.line, self.divisor = clk, line, divisor
        self.line.value = 1

    async def send(self, data):
        for b in data:
            for v in [0] + [(b >> k) & 1 for k in range(8)] + [1]:
                self.line.value = v
                await ClockCycles(self.clk, self.divisor)


class UartSink:
    """Decodes 8N1 bytes from ``line`` into ``items``; a bad stop bit raises."""

    def __init__(self, clk, line, divisor: int):
        self.clk, self.line, self.divisor = clk, line, divisor
        self.items: list[int] = []
        cocotb.start_soon(self._run())

    async def _run(self):
        while True:
            await FallingEdge(self.clk)
            if self.line.value != 0:
                continue
            await ClockCycles(self.clk, self.divisor // 2, rising=False)
            assert self.line.value == 0, "tx: start bit too short"
            byte = 0
            for k in range(8):
                await ClockCycles(self.clk, self.divisor, rising=False)
                byte |= int(self.line.value) << k
            await ClockCycles(self.clk, self.divisor, rising=False)
            assert self.line.value == 1, f"tx: framing error after byte {byte:#04x}"
            self.items.append(byte)

    async def wait_for(self, n: int, timeout_cycles: int):
        for _ in range(timeout_cycles):
            if len(self.items) >= n:
                return self.items[:n]
            await RisingEdge(self.clk)
        raise TimeoutError(f"tx: got {len(self.items)} of {n} bytes after {timeout_cycles} cycles")


def decode(reply: list[int], n_logits: int) -> tuple[int, list[int]]:
    assert reply[0] == REPLY, f"reply byte {reply[0]:#04x}, expected {REPLY:#04x}"
    logits = [int.from_bytes(bytes(reply[1 + 4 * k: 5 + 4 * k]), "little", signed=True)
              for k in range(n_logits)]
    return reply[-1], logits


def _setup(dut):
    cfg = params()
    tb = TB(dut)
    src = UartSource(tb.clk, dut.rx, cfg["divisor"])
    sink = UartSink(tb.clk, dut.tx, cfg["divisor"])
    return cfg, tb, src, sink


def _reply_timeout(cfg) -> int:
    frame = 10 * cfg["divisor"]
    return (reply_length(cfg["n_logits"]) + 4) * frame + 4 * cfg["cycles_per_image"] + 1000


async def _check_images(dut, cfg, tb, src, sink, *, noise=()):
    n = reply_length(cfg["n_logits"])
    sb = Scoreboard("board top")
    for idx, (image, want) in enumerate(zip(cfg["images"], cfg["expected"], strict=True)):
        await src.send(list(noise) + [SYNC] + list(image))
        reply = await sink.wait_for(n * (idx + 1), _reply_timeout(cfg))
        cls, logits = decode(reply[n * idx:], cfg["n_logits"])
        sb.compare(want, logits, describe=lambda i, idx=idx: f"image {idx}, logit {i}")
        best = max(range(len(want)), key=lambda k: (want[k], -k))
        assert cls == best, f"image {idx}: class {cls}, expected {best}"
        await ClockCycles(tb.clk, 2)
        assert int(dut.leds.value) & 0xF == best, f"image {idx}: LEDs show {dut.leds.value}"


@cocotb.test()
async def images_over_uart(dut):
    """A few images, each answered with the expected logits and class."""
    cfg, tb, src, sink = _setup(dut)
    await tb.reset()
    await _check_images(dut, cfg, tb, src, sink, noise=(0x00, 0x5A, 0xFF))
    assert (int(dut.leds.value) >> 6) & 1 == 0, "error LED set on a clean run"


@cocotb.test()
async def abandoned_image_times_out(dut):
    """Half an image, silence, then a whole image: only the whole one is answered."""
    cfg, tb, src, sink = _setup(dut)
    await tb.reset()
    await src.send([SYNC] + list(cfg["images"][0][: cfg["n_pixels"] // 3]))
    quiet = (cfg["timeout_bytes"] + 2) * 10 * cfg["divisor"] + 4 * cfg["cycles_per_image"]
    await ClockCycles(tb.clk, quiet)
    assert sink.items == [], f"answer to an abandoned image: {sink.items}"
    assert (int(dut.leds.value) >> 6) & 1 == 1, "error LED not set after a timeout"
    await _check_images(dut, {**cfg, "images": cfg["images"][:1],
                              "expected": cfg["expected"][:1]}, tb, src, sink)
