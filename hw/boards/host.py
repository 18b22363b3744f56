"""Send one image to a board over its serial port and print the class and the logits.

    python -m hw.host --port /dev/ttyUSB0 --image digit.png
    python -m hw.host --port /dev/ttyUSB0 --mnist-index 7 [--data-dir DIR]

The protocol is :mod:`hw.boards.top`'s: ``0xA5`` then 784 pixel bytes; the answer is ``0x5A``, ten
4-byte little-endian signed logits and the class byte. A PNG must be 28x28 (grayscale, or RGB,
which is converted); pixels are sent as they are (the board applies the export's pixel shift).
"""

import argparse
import sys

import numpy as np

from .top import REPLY, SYNC, reply_length

__all__ = ["encode_request", "decode_reply", "load_png", "main", "parse_args", "HostError"]

N_PIXELS, N_LOGITS, SHAPE = 784, 10, (28, 28)


class HostError(RuntimeError):
    """A bad image, a missing port, or a malformed answer."""


def encode_request(image) -> bytes:
    x = np.asarray(image)
    if x.shape != SHAPE and x.shape != (N_PIXELS,):
        raise HostError(f"image must be 28x28 (784 pixels), not shape {x.shape}")
    if x.min() < 0 or x.max() > 255:
        raise HostError(f"pixels must be in 0..255, not {x.min()}..{x.max()}")
    return bytes([SYNC]) + x.astype(np.uint8).reshape(-1).tobytes()


def decode_reply(data: bytes, n_logits: int = N_LOGITS) -> tuple[int, list[int]]:
    """``(class, logits)`` from the board's answer; HostError if it is malformed."""
    n = reply_length(n_logits)
    if len(data) != n:
        raise HostError(f"expected {n} reply bytes, got {len(data)} (is the board programmed, "
                        f"and the baud rate right?)")
    if data[0] != REPLY:
        raise HostError(f"reply starts with {data[0]:#04x}, not {REPLY:#04x}")
    logits = [int.from_bytes(data[1 + 4 * k: 5 + 4 * k], "little", signed=True)
              for k in range(n_logits)]
    cls = data[-1]
    if cls >= n_logits:
        raise HostError(f"class byte {cls} out of range")
    return cls, logits


def load_png(path) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise HostError("reading PNG files needs pillow (pip install pillow)") from None
    try:
        img = Image.open(path)
    except OSError as err:
        raise HostError(f"{path}: cannot read the image ({err})") from None
    x = np.asarray(img.convert("L"))
    if x.shape != SHAPE:
        raise HostError(f"{path}: image must be 28x28 pixels, not {x.shape[1]}x{x.shape[0]}")
    return x


def exchange(port: str, baud: int, request: bytes, timeout: float) -> bytes:
    try:
        import serial
    except ImportError:
        raise HostError("the serial port needs pyserial (pip install pyserial)") from None
    try:
        with serial.Serial(port, baud, timeout=timeout) as ser:
            ser.reset_input_buffer()
            ser.write(request)
            ser.flush()
            return ser.read(reply_length(N_LOGITS))
    except serial.SerialException as err:
        raise HostError(f"cannot use serial port {port!r}: {err}") from None


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m hw.host", description=__doc__.split("\n")[0])
    ap.add_argument("--port", required=True, help="serial device, e.g. /dev/ttyUSB0 or COM3")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="a 28x28 PNG")
    src.add_argument("--mnist-index", type=int, help="index into the MNIST test set")
    ap.add_argument("--data-dir", help="MNIST folder (default: $BM_DATA_DIR)")
    ap.add_argument("--baud", type=int, default=115200)
    ap.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        label = None
        if args.image:
            image = load_png(args.image)
        else:
            from model.data import load_mnist_split

            x_test, y_test = load_mnist_split(args.data_dir, "test")
            if not 0 <= args.mnist_index < len(x_test):
                raise HostError(f"--mnist-index must be in 0..{len(x_test) - 1}, "
                                f"not {args.mnist_index}")
            image, label = x_test[args.mnist_index], int(y_test[args.mnist_index])
        cls, logits = decode_reply(exchange(args.port, args.baud, encode_request(image),
                                            args.timeout))
    except (HostError, ValueError) as err:
        print(f"hw.host: {err}", file=sys.stderr)
        return 1
    print(f"class: {cls}" + (f" (label {label})" if label is not None else ""))
    print("logits: " + " ".join(str(v) for v in logits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
