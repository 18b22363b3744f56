"""PLL settings for the board builds, and the clock domain that uses them.

``python -m hw.build --freq MHZ`` runs the design from a PLL when ``MHZ`` differs from the board
oscillator. The divider settings are computed here, in Python, from the data-sheet limits of
each family's PLL, and the primitive is instantiated by :class:`PLLDomain`:

========  ==============  ====================================================================
family    primitive       output frequency and limits (MHz)
========  ==============  ====================================================================
ecp5      EHXPLLL         ``f_in / CLKI_DIV * CLKFB_DIV``, feedback from CLKOP;
                          PFD ``f_in / CLKI_DIV`` in [3.125, 400], VCO ``f_out * CLKOP_DIV``
                          in [400, 800], output in [3.125, 400]; CLKI_DIV 1..128,
                          CLKFB_DIV 1..80, CLKOP_DIV 1..128 (Lattice TN1263, Trellis ecppll)
ice40     SB_PLL40_PAD    ``f_in * (DIVF + 1) / (DIVR + 1) / 2**DIVQ``, SIMPLE feedback;
                          PFD in [10, 133], VCO in [533, 1066], output in [16, 275];
                          DIVR 0..15, DIVF 0..127, DIVQ 1..6 (Lattice iCE40 sysCLOCK guide,
                          icepll)
gowin     rPLL            ``f_in * (FBDIV_SEL + 1) / (IDIV_SEL + 1)``; PFD in [3, 400], VCO
                          ``f_out * ODIV_SEL`` in (400, 1200), output in (3.125, 600) for the
                          GW1NR-9 C6/I5; (500, 1250) and (3.90625, 625) for the GW2A-18 C8/I7;
                          IDIV_SEL, FBDIV_SEL 0..63, ODIV_SEL in {2, 4, 8, ..., 128}
                          (Gowin DS117/DS102, apicula gowin_pll)
========  ==============  ====================================================================

The search takes the setting whose output is closest to the request; ties go to the highest
PFD (least jitter) and then the VCO nearest the middle of its range. A request that no setting
reaches within :data:`TOLERANCE` (relative) raises :class:`ValueError` naming the nearest
frequency. The design is then constrained and reported at the *achieved* frequency.

Reset: the ``sync`` domain is held in reset until the PLL has locked and then for
:data:`RESET_US` microseconds more (the iCE40's block RAMs read as zero for about 3 us after
configuration; the same hold is harmless elsewhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["PLLSettings", "ecp5_pll", "ice40_pll", "gowin_pll", "pll_settings", "PLLDomain",
           "TOLERANCE", "RESET_US", "GOWIN_LIMITS"]

TOLERANCE = 0.01
RESET_US = 16


@dataclass(frozen=True)
class PLLSettings:
    """One legal PLL configuration: ``f_out`` is the frequency it really makes."""

    family: str
    f_in: float
    f_out: float
    f_pfd: float
    f_vco: float
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"family": self.family, "f_in_mhz": self.f_in, "f_out_mhz": self.f_out,
                "f_pfd_mhz": self.f_pfd, "f_vco_mhz": self.f_vco, "params": dict(self.params)}


def _check_freqs(f_in, f_out):
    for name, v in (("input frequency", f_in), ("output frequency", f_out)):
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a positive number of MHz, not {v!r}")


def _pick(family, f_in, f_out, candidates, vco_mid, out_range):
    lo, hi = out_range
    if not lo <= f_out <= hi:
        raise ValueError(f"{family} PLL output must be in [{lo:g}, {hi:g}] MHz, "
                         f"not {f_out:g}")
    best, key_best = None, None
    for cand in candidates:
        key = (round(abs(cand.f_out - f_out), 9), -cand.f_pfd, abs(cand.f_vco - vco_mid))
        if key_best is None or key < key_best:
            best, key_best = cand, key
    if best is None or abs(best.f_out - f_out) > TOLERANCE * f_out:
        near = f"; nearest {best.f_out:.4f} MHz" if best else ""
        raise ValueError(f"{family} PLL cannot make {f_out:g} MHz from {f_in:g} MHz within "
                         f"{TOLERANCE:.1%}{near}")
    return best


def ecp5_pll(f_in: float, f_out: float) -> PLLSettings:
    """EHXPLLL settings (CLKOP, feedback from CLKOP) for ``f_out`` MHz from ``f_in`` MHz."""
    _check_freqs(f_in, f_out)
    if not 8 <= f_in <= 400:
        raise ValueError(f"ecp5 PLL input must be in [8, 400] MHz, not {f_in:g}")

    def gen():
        for clki in range(1, 129):
            pfd = f_in / clki
            if not 3.125 <= pfd <= 400:
                continue
            for clkfb in range(1, 81):
                out = pfd * clkfb
                if not 3.125 <= out <= 400:
                    continue
                # the output divider only sets the VCO: take the one nearest mid-range
                ops = [d for d in range(1, 129) if 400 <= out * d <= 800]
                if not ops:
                    continue
                clkop = min(ops, key=lambda d: abs(out * d - 600))
                yield PLLSettings("ecp5", f_in, out, pfd, out * clkop, {
                    "CLKI_DIV": clki, "CLKFB_DIV": clkfb, "CLKOP_DIV": clkop,
                    "CLKOP_CPHASE": (clkop - 1) // 2})

    return _pick("ecp5", f_in, f_out, gen(), 600, (3.125, 400))


def ice40_pll(f_in: float, f_out: float) -> PLLSettings:
    """SB_PLL40_PAD / SB_PLL40_CORE settings (SIMPLE feedback) for ``f_out`` from ``f_in``."""
    _check_freqs(f_in, f_out)
    if not 10 <= f_in <= 133:
        raise ValueError(f"ice40 PLL input must be in [10, 133] MHz, not {f_in:g}")

    def gen():
        for divr in range(16):
            pfd = f_in / (divr + 1)
            if not 10 <= pfd <= 133:
                continue
            for divf in range(128):
                vco = pfd * (divf + 1)
                if not 533 <= vco <= 1066:
                    continue
                for divq in range(1, 7):
                    out = vco / (1 << divq)
                    if 16 <= out <= 275:
                        yield PLLSettings("ice40", f_in, out, pfd, vco, {
                            "DIVR": divr, "DIVF": divf, "DIVQ": divq,
                            "FILTER_RANGE": _ice40_filter(pfd)})

    return _pick("ice40", f_in, f_out, gen(), 800, (16, 275))


def _ice40_filter(pfd: float) -> int:
    for rng, top in enumerate((17, 26, 44, 66, 101), start=1):
        if pfd < top:
            return rng
    return 6


# Gowin rPLL limits per device (pfd, vco, clkout) in MHz, open intervals for vco and clkout
GOWIN_LIMITS = {
    "GW1N-9C": ((3, 400), (400, 1200), (3.125, 600)),
    "GW2A-18C": ((3, 500), (500, 1250), (3.90625, 625)),
}
_GOWIN_ODIV = (2, 4, 8, 16, 32, 48, 64, 80, 96, 112, 128)


def gowin_pll(f_in: float, f_out: float, device: str = "GW1N-9C") -> PLLSettings:
    """rPLL settings (CLKOUT) for ``f_out`` from ``f_in`` on the chip family ``device``."""
    _check_freqs(f_in, f_out)
    if device not in GOWIN_LIMITS:
        raise ValueError(f"gowin PLL limits are known for {sorted(GOWIN_LIMITS)}, "
                         f"not {device!r}")
    (pfd_lo, pfd_hi), (vco_lo, vco_hi), (out_lo, out_hi) = GOWIN_LIMITS[device]

    def gen():
        for idiv in range(64):
            pfd = f_in / (idiv + 1)
            if not pfd_lo <= pfd <= pfd_hi:
                continue
            for fbdiv in range(64):
                out = pfd * (fbdiv + 1)
                if not out_lo < out < out_hi:
                    continue
                ods = [d for d in _GOWIN_ODIV if vco_lo < out * d < vco_hi]
                if not ods:
                    continue
                odiv = min(ods, key=lambda d: abs(out * d - (vco_lo + vco_hi) / 2))
                yield PLLSettings("gowin", f_in, out, pfd, out * odiv, {
                    "IDIV_SEL": idiv, "FBDIV_SEL": fbdiv, "ODIV_SEL": odiv})

    return _pick("gowin", f_in, f_out, gen(), (vco_lo + vco_hi) / 2, (out_lo, out_hi))


def pll_settings(family: str, f_in: float, f_out: float, *, device: str | None = None):
    if family == "ecp5":
        return ecp5_pll(f_in, f_out)
    if family == "ice40":
        return ice40_pll(f_in, f_out)
    if family == "gowin":
        return gowin_pll(f_in, f_out, device or "GW1N-9C")
    raise ValueError(f"no PLL support for family {family!r} (ecp5, ice40, gowin)")


class PLLDomain:
    """Elaboratable: drives the clock and reset of the ``sync`` domain (and the clock of the
    reset-less ``por`` domain that times the reset) from the board clock through the family's
    PLL. The parent defines both domains. ``clk_resource`` is the board clock's resource name
    (``platform.default_clk``). The output clock gets a clock constraint of ``settings.f_out``.
    """

    def __new__(cls, settings: PLLSettings, clk_resource: str):
        from amaranth.hdl import (
            ClockSignal,
            Const,
            Elaboratable,
            Instance,
            Module,
            ResetSignal,
            Signal,
        )
        from amaranth.lib import io

        class _PLLDomain(Elaboratable):
            def __init__(self):
                self.settings = settings
                self.locked = Signal()

            def elaborate(self, platform):
                s = self.settings
                m = Module()
                pin = platform.request(clk_resource, dir="-")
                clk_out, lock = Signal(), Signal()
                if s.family == "ice40":
                    # the pad feeds the PLL directly (no SB_IO in between)
                    m.submodules.pll = Instance(
                        "SB_PLL40_PAD",
                        p_FEEDBACK_PATH="SIMPLE",
                        p_DIVR=s.params["DIVR"], p_DIVF=s.params["DIVF"],
                        p_DIVQ=s.params["DIVQ"], p_FILTER_RANGE=s.params["FILTER_RANGE"],
                        i_PACKAGEPIN=pin.io, i_RESETB=1, i_BYPASS=0,
                        o_PLLOUTGLOBAL=clk_out, o_LOCK=lock)
                else:
                    m.submodules.clk_buf = buf = io.Buffer("i", pin)
                    if s.family == "ecp5":
                        m.submodules.pll = Instance(
                            "EHXPLLL",
                            a_FREQUENCY_PIN_CLKI=f"{s.f_in:g}",
                            a_FREQUENCY_PIN_CLKOP=f"{s.f_out:g}",
                            a_ICP_CURRENT="12", a_LPF_RESISTOR="8",
                            a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
                            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED",
                            p_STDBY_ENABLE="DISABLED", p_DPHASE_SOURCE="DISABLED",
                            p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
                            p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
                            p_CLKI_DIV=s.params["CLKI_DIV"], p_CLKOP_ENABLE="ENABLED",
                            p_CLKOP_DIV=s.params["CLKOP_DIV"],
                            p_CLKOP_CPHASE=s.params["CLKOP_CPHASE"], p_CLKOP_FPHASE=0,
                            p_FEEDBK_PATH="CLKOP", p_CLKFB_DIV=s.params["CLKFB_DIV"],
                            i_RST=0, i_STDBY=0, i_CLKI=buf.i, i_CLKFB=clk_out,
                            i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1,
                            i_PHASELOADREG=1, i_PLLWAKESYNC=0, i_ENCLKOP=0,
                            o_CLKOP=clk_out, o_LOCK=lock)
                    elif s.family == "gowin":
                        m.submodules.pll = Instance(
                            "rPLL",
                            p_FCLKIN=f"{s.f_in:g}",
                            p_IDIV_SEL=s.params["IDIV_SEL"],
                            p_FBDIV_SEL=s.params["FBDIV_SEL"],
                            p_ODIV_SEL=s.params["ODIV_SEL"],
                            i_CLKIN=buf.i, i_CLKFB=0, i_RESET=0, i_RESET_P=0,
                            i_FBDSEL=Const(0, 6), i_IDSEL=Const(0, 6), i_ODSEL=Const(0, 6),
                            i_PSDA=Const(0, 4), i_DUTYDA=Const(0, 4), i_FDLY=Const(0, 4),
                            o_CLKOUT=clk_out, o_LOCK=lock)
                    else:
                        raise ValueError(f"no PLL for family {s.family!r}")
                m.d.comb += [ClockSignal("sync").eq(clk_out), ClockSignal("por").eq(clk_out)]
                platform.add_clock_constraint(clk_out, s.f_out * 1e6)
                # reset: until locked, then RESET_US more
                hold = max(2, math.ceil(RESET_US * s.f_out))
                count = Signal(range(hold + 1))
                lock_s = Signal(2)
                m.d.por += lock_s.eq(lock_s << 1 | lock)
                with m.If(~lock_s[1]):
                    m.d.por += count.eq(0)
                with m.Elif(count != hold):
                    m.d.por += count.eq(count + 1)
                m.d.comb += [ResetSignal("sync").eq(count != hold), self.locked.eq(lock_s[1])]
                return m
        return _PLLDomain()
