"""PLL divider settings (hw.pll): legal against each family's limits, exact where the request is
reachable, and refused clearly where it is not; the PLL primitive in the elaborated board top."""

import pytest

from hw.boards.platforms import get_board
from hw.boards.pll import GOWIN_LIMITS, TOLERANCE, ecp5_pll, gowin_pll, ice40_pll, pll_settings
from hw.boards.top import BoardTop, FixtureCore, PlatformTop


def check_ecp5(s):
    p = s.params
    assert 1 <= p["CLKI_DIV"] <= 128 and 1 <= p["CLKFB_DIV"] <= 80 and 1 <= p["CLKOP_DIV"] <= 128
    assert s.f_pfd == pytest.approx(s.f_in / p["CLKI_DIV"])
    assert s.f_out == pytest.approx(s.f_pfd * p["CLKFB_DIV"])
    assert s.f_vco == pytest.approx(s.f_out * p["CLKOP_DIV"])
    assert 3.125 <= s.f_pfd <= 400 and 400 <= s.f_vco <= 800 and 3.125 <= s.f_out <= 400


def check_ice40(s):
    p = s.params
    assert 0 <= p["DIVR"] <= 15 and 0 <= p["DIVF"] <= 127 and 1 <= p["DIVQ"] <= 6
    assert s.f_pfd == pytest.approx(s.f_in / (p["DIVR"] + 1))
    assert s.f_vco == pytest.approx(s.f_pfd * (p["DIVF"] + 1))
    assert s.f_out == pytest.approx(s.f_vco / 2 ** p["DIVQ"])
    assert 10 <= s.f_pfd <= 133 and 533 <= s.f_vco <= 1066 and 16 <= s.f_out <= 275
    assert 1 <= p["FILTER_RANGE"] <= 6


def check_gowin(s, device):
    p = s.params
    (pfd_lo, pfd_hi), (vco_lo, vco_hi), (out_lo, out_hi) = GOWIN_LIMITS[device]
    assert 0 <= p["IDIV_SEL"] <= 63 and 0 <= p["FBDIV_SEL"] <= 63
    assert p["ODIV_SEL"] in (2, 4, 8, 16, 32, 48, 64, 80, 96, 112, 128)
    assert s.f_out == pytest.approx(s.f_in * (p["FBDIV_SEL"] + 1) / (p["IDIV_SEL"] + 1))
    assert s.f_vco == pytest.approx(s.f_out * p["ODIV_SEL"])
    assert pfd_lo <= s.f_pfd <= pfd_hi and vco_lo < s.f_vco < vco_hi and out_lo < s.f_out < out_hi


# golden settings: (input, output) -> dividers, checked by hand against the formulas above
ECP5_GOLDEN = (
    (25, 50, {"CLKI_DIV": 1, "CLKFB_DIV": 2, "CLKOP_DIV": 12, "CLKOP_CPHASE": 5}),
    (25, 62.5, {"CLKI_DIV": 2, "CLKFB_DIV": 5, "CLKOP_DIV": 10, "CLKOP_CPHASE": 4}),
    (25, 100, {"CLKI_DIV": 1, "CLKFB_DIV": 4, "CLKOP_DIV": 6, "CLKOP_CPHASE": 2}),
)
ICE40_GOLDEN = ((12, 24, {"DIVR": 0, "DIVF": 63, "DIVQ": 5, "FILTER_RANGE": 1}),)
GOWIN_GOLDEN = ((27, 54, "GW1N-9C", {"IDIV_SEL": 0, "FBDIV_SEL": 1}),)


@pytest.mark.parametrize("f_in,f_out,want", ECP5_GOLDEN)
def test_ecp5_pll_golden(f_in, f_out, want):
    s = ecp5_pll(f_in, f_out)
    assert s.params == want and s.f_out == f_out
    check_ecp5(s)


@pytest.mark.parametrize("f_in,f_out,want", ICE40_GOLDEN)
def test_ice40_pll_golden(f_in, f_out, want):
    s = ice40_pll(f_in, f_out)
    assert s.params == want and s.f_out == f_out
    check_ice40(s)


@pytest.mark.parametrize("f_in,f_out,device,want", GOWIN_GOLDEN)
def test_gowin_pll_golden(f_in, f_out, device, want):
    s = gowin_pll(f_in, f_out, device)
    assert {k: s.params[k] for k in want} == want and s.f_out == f_out
    check_gowin(s, device)


@pytest.mark.parametrize("f_out", [20, 33.3, 50, 62.5, 65, 70, 75, 80, 90, 125, 150])
def test_ecp5_pll_sweep_is_legal_and_close(f_out):
    s = ecp5_pll(25, f_out)
    check_ecp5(s)
    assert abs(s.f_out - f_out) <= TOLERANCE * f_out


@pytest.mark.parametrize("f_out", [16.5, 18, 20, 24, 30, 36, 39.75, 48])
def test_ice40_pll_sweep_is_legal_and_close(f_out):
    s = ice40_pll(12, f_out)
    check_ice40(s)
    assert abs(s.f_out - f_out) <= TOLERANCE * f_out


@pytest.mark.parametrize("device", sorted(GOWIN_LIMITS))
@pytest.mark.parametrize("f_out", [13.5, 27, 33.75, 40.5, 54, 67.5, 81])
def test_gowin_pll_sweep_is_legal_and_close(device, f_out):
    s = gowin_pll(27, f_out, device)
    check_gowin(s, device)
    assert abs(s.f_out - f_out) <= TOLERANCE * f_out


def test_pll_refusals_name_the_problem():
    with pytest.raises(ValueError, match=r"output must be in \[3.125, 400\] MHz, not 1000"):
        ecp5_pll(25, 1000)
    with pytest.raises(ValueError, match="cannot make 40 MHz from 27 MHz.*nearest 40.5000 MHz"):
        gowin_pll(27, 40)
    with pytest.raises(ValueError, match="not 'GW9'"):
        gowin_pll(27, 50, "GW9")
    with pytest.raises(ValueError, match="no PLL support for family 'xilinx'"):
        pll_settings("xilinx", 100, 50)
    with pytest.raises(ValueError, match="positive number"):
        ecp5_pll(25, -3)


@pytest.mark.parametrize("board,freq,prim", [
    ("ulx3s", 62.5, "EHXPLLL"), ("icebreaker", 24, "SB_PLL40_PAD"),
    ("tang_nano_9k", 54, "rPLL")])
def test_platform_top_instantiates_the_pll(board, freq, prim):
    b = get_board(board)
    platform = b.platform()
    if b.extra.get("break_off_pmod"):
        platform.add_resources(platform.break_off_pmod)
    s = pll_settings(b.family, b.clk_mhz, freq, device=getattr(platform, "_chipdb_device", None))
    top = BoardTop(FixtureCore(), divisor=8)
    plan = platform.prepare(PlatformTop(b, top, s), "top")
    il = plan.files["top.il"]
    assert f"cell \\{prim} " in il
    for k, v in s.params.items():
        assert f"parameter \\{k} {v}" in il
