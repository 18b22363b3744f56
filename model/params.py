"""Parameters of the integer BM and MAC datapaths: the contract between ``model/`` and ``hw/``.

Standard library only. The NumPy reference (:mod:`model.reference`), the Amaranth generators in
``hw/``, the cocotb testbenches and the reports all take these same frozen objects. Every width,
table size and shift lives here; derived values are properties, defined once.

See :mod:`model.reference` for the exact integer semantics that these numbers parameterise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

__all__ = [
    "BMParams",
    "MACParams",
    "LayerSpec",
    "NEURONS",
    "SIGNED_NEURONS",
    "PRESETS",
    "log_table",
    "exp_table",
    "params_from_dict",
]


NEURONS = ("bm15", "lns", "bm2")
"""Integer BM neuron types of a layer (:attr:`LayerSpec.neuron`)."""
SIGNED_NEURONS = ("lns", "bm2")
"""Neurons whose weights carry a sign bit (stored as the export's ``layer<i>.sign``)."""


def _clog2(n: int) -> int:
    """Bits needed to hold the values ``0 .. n-1`` (at least 1)."""
    return max(1, (n - 1).bit_length())


def _check_fields(params, ranges: dict) -> None:
    """Every field an int (not a bool), and each named field within its ``(lo, hi)`` (the
    bounds' names, as the message shows them, may be other fields)."""
    for f in fields(params):
        v = getattr(params, f.name)
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"{f.name} must be an int, not {v!r}")
    for name, (lo, hi) in {"a_bits": (2, 16), **ranges}.items():
        v = getattr(params, name)
        top = getattr(params, hi) if isinstance(hi, str) else hi
        if not lo <= v <= top:
            raise ValueError(f"{name} must be in {lo}..{hi}, not {v!r}")


@dataclass(frozen=True)
class BMParams:
    """Integer 1.5-branch bipolar morphological datapath.

    Parameters
    ----------
    a_bits : int
        Width of an unsigned activation code. Codes are ``0 .. 2**a_bits - 1``.
    dx : int
        Integer shift added to an activation code before the log unit (``log2(x + dx)``).
        With ``dx = 0`` a zero code is minus infinity, signalled by the log unit's zero flag.
    log_frac : int
        ``f``: fractional bits of every fixed-point log2 value (activations and weights).
    mant_bits : int
        Mantissa bits below the leading one that index the log table (``2**mant_bits`` entries).
        Lower bits are truncated.
    w_log_bits : int
        Width of a signed stored weight code ``Lw = round(2**f * log2((w + dw) * scale))``.
    exp_table_bits : int
        Precision ``t`` of the exp table: entry ``r`` is ``round(2**t * 2**(r / 2**f))``.
    exp_bits : int
        Width of the unsigned exp-unit output; larger results saturate to ``2**exp_bits - 1``.
    bias_bits : int
        Width of a signed per-channel bias.
    acc_bits : int
        Width of the signed logit produced by the last layer (saturating).
    max_c_shift : int
        Largest allowed left shift of the input-window sum (the ``dw * sum x`` correction).
    """

    a_bits: int = 8
    dx: int = 0
    log_frac: int = 5
    mant_bits: int = 5
    w_log_bits: int = 10
    exp_table_bits: int = 8
    exp_bits: int = 24
    bias_bits: int = 24
    acc_bits: int = 28
    max_c_shift: int = 15

    def __post_init__(self):
        _check_fields(self, {"log_frac": (1, 8), "mant_bits": (1, 12), "w_log_bits": (4, 16),
                           "exp_table_bits": (2, 16), "exp_bits": (4, 48), "bias_bits": (2, 48),
                           "acc_bits": (4, 64), "max_c_shift": (0, 31)})
        if self.dx < 0 or self.a_max + self.dx >= 1 << 16:
            raise ValueError(f"dx must be >= 0 and keep x + dx below 2**16, not {self.dx!r}")

    # -- derived values ----------------------------------------------------------------------
    @property
    def a_max(self) -> int:
        return (1 << self.a_bits) - 1

    @property
    def u_bits(self) -> int:
        """Width of ``x + dx``, the log unit's internal operand."""
        return (self.a_max + self.dx).bit_length()

    @property
    def e_bits(self) -> int:
        """Width of the leading-one position (the integer part of an activation log)."""
        return _clog2(self.u_bits)

    @property
    def lx_bits(self) -> int:
        """Width of an unsigned activation log code ``Lx = e * 2**f + table[m]``: wide enough
        for the largest code (the last table entry may round up to ``2**f``)."""
        largest = ((self.u_bits - 1) << self.log_frac) + max(self.log_table)
        return max(self.e_bits + self.log_frac, largest.bit_length())

    @property
    def m_bits(self) -> int:
        """Width of the signed branch sum ``Lx + Lw`` and of its maximum ``M``."""
        return max(self.lx_bits + 1, self.w_log_bits) + 1

    @property
    def w_log_min(self) -> int:
        return -(1 << (self.w_log_bits - 1))

    @property
    def w_log_max(self) -> int:
        return (1 << (self.w_log_bits - 1)) - 1

    @property
    def exp_max(self) -> int:
        return (1 << self.exp_bits) - 1

    @property
    def log_table(self) -> tuple[int, ...]:
        return log_table(self)

    @property
    def exp_table(self) -> tuple[int, ...]:
        return exp_table(self)

    @property
    def log_table_entry_bits(self) -> int:
        return self.log_frac

    @property
    def exp_table_entry_bits(self) -> int:
        return self.exp_table_bits + 1

    @property
    def slug(self) -> str:
        return (
            f"bm_a{self.a_bits}_dx{self.dx}_f{self.log_frac}_m{self.mant_bits}"
            f"_w{self.w_log_bits}_t{self.exp_table_bits}_e{self.exp_bits}"
        )

    def to_dict(self) -> dict:
        return {"kind": "bm", **asdict(self)}


@dataclass(frozen=True)
class MACParams:
    """Integer multiply-accumulate baseline datapath (int8 weights, unsigned activations).

    Parameters
    ----------
    a_bits : int
        Width of an unsigned activation code.
    w_bits : int
        Width of a signed weight.
    bias_bits : int
        Width of a signed per-channel bias, in accumulator units.
    acc_bits : int
        Width of the signed accumulator. The reference checks that no layer can overflow it.
    """

    a_bits: int = 8
    w_bits: int = 8
    bias_bits: int = 32
    acc_bits: int = 32

    def __post_init__(self):
        _check_fields(self, {"w_bits": (2, 16), "acc_bits": (4, 64), "bias_bits": (2, "acc_bits")})

    @property
    def a_max(self) -> int:
        return (1 << self.a_bits) - 1

    @property
    def w_min(self) -> int:
        return -(1 << (self.w_bits - 1))

    @property
    def w_max(self) -> int:
        return (1 << (self.w_bits - 1)) - 1

    @property
    def prod_bits(self) -> int:
        """Width of a signed product of an unsigned activation and a signed weight."""
        return self.a_bits + self.w_bits

    @property
    def slug(self) -> str:
        return f"mac_a{self.a_bits}_w{self.w_bits}_acc{self.acc_bits}"

    def to_dict(self) -> dict:
        return {"kind": "mac", **asdict(self)}


@dataclass(frozen=True)
class LayerSpec:
    """One layer of an integer network.

    Parameters
    ----------
    kind : str
        ``"conv"`` (square kernel, stride 1, no padding) or ``"linear"``.
    in_ch, out_ch : int
        Channels (conv) or features (linear).
    k : int
        Kernel size (1 for linear).
    c_shift : int
        BM only: the window-sum correction is ``sum(x) << c_shift``. Unused by MAC.
    out_shift : int
        Requantization: rounding arithmetic right shift of the accumulator.
    relu : bool
        Saturate at zero and ``a_max`` (an activation) or, when false, output a signed logit.
    pool : int
        Max-pool size after the activation (1 for none).
    neuron : str
        BM only: the layer's neuron (:data:`NEURONS`). ``"bm15"``: the 1.5-branch max neuron of
        every convolution. The classifier (the last, linear layer) may instead be ``"lns"``, the
        log-domain sum (the 1.5-BM neuron's classical limit: signed terms ``2**(Lx + Lw)`` added
        in a wide accumulator), or ``"bm2"``, the 2-branch max (``max x v+ - max x v-``). Both
        take a per-weight sign; see :mod:`model.reference`. A MAC layer keeps ``"bm15"``, which
        it ignores.
    """

    kind: str
    in_ch: int
    out_ch: int
    k: int = 1
    c_shift: int = 0
    out_shift: int = 0
    relu: bool = True
    pool: int = 1
    neuron: str = "bm15"

    def __post_init__(self):
        if self.neuron not in NEURONS:
            raise ValueError(
                f"unknown neuron {self.neuron!r}: the datapath builds {', '.join(NEURONS)}"
            )
        if self.kind not in ("conv", "linear"):
            raise ValueError(f"kind must be 'conv' or 'linear', not {self.kind!r}")
        for name in ("in_ch", "out_ch", "k", "pool"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)!r}")
        if self.neuron != "bm15" and self.kind != "linear":
            raise ValueError(f"a {self.neuron!r} neuron is a linear layer, not {self.kind!r}")
        if self.kind == "linear" and self.k != 1:
            raise ValueError(f"a linear layer has k = 1, not {self.k!r}")
        if self.c_shift < 0 or self.out_shift < 0:
            raise ValueError(
                f"shifts must be >= 0, not c_shift={self.c_shift!r} out_shift={self.out_shift!r}"
            )

    @property
    def fan_in(self) -> int:
        """Inputs per output neuron: ``n`` in the paper."""
        return self.in_ch * self.k * self.k

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.kind == "conv":
            return (self.out_ch, self.in_ch, self.k, self.k)
        return (self.out_ch, self.in_ch)

    @property
    def signed_weights(self) -> bool:
        """The layer stores a sign per weight beside its log code (``lns`` and ``bm2``)."""
        return self.neuron in SIGNED_NEURONS

    def to_dict(self) -> dict:
        return asdict(self)


def log_table(p: BMParams) -> tuple[int, ...]:
    """Mantissa table of the log unit: ``round(2**f * log2(1 + m / 2**mant_bits))``."""
    scale = 1 << p.log_frac
    n = 1 << p.mant_bits
    return tuple(int(math.floor(scale * math.log2(1 + m / n) + 0.5)) for m in range(n))


def exp_table(p: BMParams) -> tuple[int, ...]:
    """Fraction table of the exp unit: ``round(2**t * 2**(r / 2**f))`` for ``r < 2**f``."""
    scale = 1 << p.exp_table_bits
    n = 1 << p.log_frac
    return tuple(int(math.floor(scale * 2 ** (r / n) + 0.5)) for r in range(n))


def params_from_dict(d: dict) -> BMParams | MACParams:
    """Rebuild a params object from :meth:`BMParams.to_dict` or :meth:`MACParams.to_dict`."""
    d = dict(d)
    kind = d.pop("kind", None)
    cls = {"bm": BMParams, "mac": MACParams}.get(kind)
    if cls is None:
        raise ValueError(f"params kind must be 'bm' or 'mac', not {kind!r}")
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {kind} params fields: {sorted(unknown)}")
    return cls(**d)


PRESETS: dict[str, BMParams | MACParams] = {
    "bm8": BMParams(),
    # 8-bit activations with the log/exp tables of bm10 (64-entry tables, 1/64 log steps)
    "bm8f6": BMParams(log_frac=6, mant_bits=6, w_log_bits=11),
    "mac8": MACParams(),
    "bm4": BMParams(a_bits=4, log_frac=4, mant_bits=3, w_log_bits=8, exp_bits=16),
    "bm6": BMParams(a_bits=6, log_frac=4, mant_bits=4, w_log_bits=9, exp_bits=20),
    "bm10": BMParams(a_bits=10, log_frac=6, mant_bits=6, w_log_bits=11),
    "bm12": BMParams(a_bits=12, log_frac=6, mant_bits=7, w_log_bits=12, exp_bits=28),
    "mac4": MACParams(a_bits=4, w_bits=4),
    "mac6": MACParams(a_bits=6, w_bits=6),
    "mac10": MACParams(a_bits=10, w_bits=10),
    "mac12": MACParams(a_bits=12, w_bits=12, acc_bits=40, bias_bits=40),
}
