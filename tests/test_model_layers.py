"""Maths of the BM layers: conversion identities, max limits, fast paths and gradients."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from model.layers import BM4Layer, BM15Layer, convert, pow2_ceil  # noqa: E402
from model.maxops import KINDS, MaxOp, branch, branch_naive  # noqa: E402


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _conv(cin=3, cout=5, k=3, seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(cin, cout, k).double()


def _lin(n=20, o=4, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(n, o).double()


def _relu_input(shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).relu()
    x[0] = 0  # an all-zero sample: every window is flagged
    return x


@pytest.mark.parametrize("form", ["bm4", "bm15"])
@pytest.mark.parametrize("geom", ["conv", "linear"])
def test_lse_alpha1_equals_classical_relu_inputs(form, geom):
    layer = _conv() if geom == "conv" else _lin()
    x = _relu_input((4, 3, 8, 8) if geom == "conv" else (4, 20))
    bm = convert(layer, form, op=MaxOp("lse", alpha=1.0)).double()
    torch.testing.assert_close(bm(x), layer(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("geom", ["conv", "linear"])
def test_lse_alpha1_equals_classical_signed_inputs(geom):
    layer = _conv() if geom == "conv" else _lin()
    g = torch.Generator().manual_seed(2)
    x = torch.randn((4, 3, 8, 8) if geom == "conv" else (4, 20), generator=g)
    bm4 = convert(layer, "bm4", op=MaxOp("lse", alpha=1.0)).double()
    torch.testing.assert_close(bm4(x), layer(x), rtol=1e-10, atol=1e-10)
    dx = float(-x.min()) + 0.5  # x + dx > 0 everywhere
    bm15 = convert(layer, "bm15", op=MaxOp("lse", alpha=1.0), dx=dx).double()
    torch.testing.assert_close(bm15(x), layer(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("geom", ["conv", "linear"])
def test_bm4_equals_eq1_branch_by_branch(kind, geom):
    """The layer stacks w+ over w- in one branch call; the result is eq. (1) with its four
    branches computed one by one from the definition (signed inputs: all four are live)."""
    layer = _conv() if geom == "conv" else _lin()
    g = torch.Generator().manual_seed(4)
    x = torch.randn((3, 3, 7, 7) if geom == "conv" else (3, 20), generator=g)
    op = MaxOp(kind, alpha=3.0)
    bm = convert(layer, "bm4", op=op).double()
    w = layer.weight.detach()
    parts = [t.clamp(min=0) for t in (x, -x)], [t.clamp(min=0) for t in (w, -w)]
    (xp, xn), (wp, wn) = parts
    ref = (
        branch_naive(xp, wp, op)
        - branch_naive(xp, wn, op)
        - branch_naive(xn, wp, op)
        + branch_naive(xn, wn, op)
    )
    ref = ref + layer.bias.detach().view((1, -1) + (1,) * (x.dim() - 2))
    torch.testing.assert_close(bm(x), ref, rtol=1e-9, atol=1e-9)


def test_bm15_dw_is_power_of_two_and_shifts_weights_positive():
    layer = _conv()
    bm = convert(layer, "bm15")
    dw = float(bm.dw)
    assert dw == pow2_ceil(dw)
    assert float((layer.weight.detach() + dw).min()) > 0
    assert float(bm.corr_x) == dw and float(bm.corr_w) == 0.0


@pytest.mark.parametrize("form", ["bm4", "bm15"])
def test_lse_tends_to_hard_max(form):
    layer = _conv()
    x = _relu_input((3, 3, 8, 8))
    with torch.no_grad():
        hard = convert(layer, form, op=MaxOp("max")).double()(x)
        errs = []
        for a in (1.0, 4.0, 16.0, 64.0):
            y = convert(layer, form, op=MaxOp("lse", alpha=a)).double()(x)
            errs.append(float((y - hard).abs().max()))
    if form == "bm15":  # one branch: the LSE decreases monotonically to the max
        assert all(e2 <= e1 + 1e-12 for e1, e2 in zip(errs, errs[1:], strict=False))
    assert errs[-2] < errs[0] and errs[-1] < 1e-2 * errs[0]


@pytest.mark.parametrize("kind", ["smorph", "lmorph"])
def test_other_approximations_tend_to_hard_max(kind):
    u = _relu_input((2, 3, 6, 6)) + 0.1
    v = torch.rand(4, 3, 3, 3, generator=torch.Generator().manual_seed(3)) + 0.05
    hard = branch(u, v, MaxOp("max"))
    e_lo = float((branch(u, v, MaxOp(kind, alpha=1.0)) - hard).abs().max())
    e_hi = float((branch(u, v, MaxOp(kind, alpha=400.0)) - hard).abs().max())
    assert e_hi < 0.05 * e_lo


def test_hard_max_bm15_matches_the_formula():
    """out = exp(max_i(ln(x_i+dx) + ln(w_i+dw))) - dw*sum x - dx*sum w - n*dx*dw + b."""
    layer = _conv(2, 3, 3)
    x = _relu_input((2, 2, 6, 6))
    dx = 0.25
    bm = convert(layer, "bm15", op=MaxOp("max"), dx=dx).double()
    dw = float(bm.dw)
    cols = torch.nn.functional.unfold(x, 3)  # (B, n, P)
    w = layer.weight.reshape(3, -1)
    z = torch.log(cols[:, None] + dx) + torch.log(w + dw)[None, :, :, None]
    e = torch.exp(z.amax(2))
    n = w.shape[1]
    ref = (
        e
        - dw * cols.sum(1)[:, None]
        - dx * w.sum(1)[None, :, None]
        - n * dx * dw
        + layer.bias[None, :, None]
    )
    torch.testing.assert_close(bm(x), ref.view(2, 3, 4, 4), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("alpha", [1.0, 3.0, 30.0])
@pytest.mark.parametrize("geom", ["conv", "linear"])
def test_fast_branch_matches_naive(kind, alpha, geom):
    g = torch.Generator().manual_seed(4)
    if geom == "conv":
        u = torch.rand(3, 3, 7, 7, generator=g)
        u[1] = 0
        u[2, :, :4] = 0
        v = torch.rand(5, 3, 3, 3, generator=g)
    else:
        u = torch.rand(4, 12, generator=g)
        u[1] = 0
        v = torch.rand(5, 12, generator=g)
    op = MaxOp(kind, alpha=alpha)
    torch.testing.assert_close(branch(u, v, op), branch_naive(u, v, op), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_branch(kind):
    g = torch.Generator().manual_seed(5)
    u = (torch.rand(2, 2, 5, 5, generator=g) + 0.1).requires_grad_(True)
    v = (torch.rand(3, 2, 3, 3, generator=g) + 0.1).requires_grad_(True)
    op = MaxOp(kind, alpha=2.5)
    assert torch.autograd.gradcheck(lambda a, b: branch(a, b, op), (u, v))


def test_gradcheck_branch_linear_hard_max():
    g = torch.Generator().manual_seed(6)
    u = (torch.rand(3, 7, generator=g) + 0.1).requires_grad_(True)
    v = (torch.rand(4, 7, generator=g) + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: branch(a, b, MaxOp("max")), (u, v))


def test_gradcheck_learnable_alpha():
    g = torch.Generator().manual_seed(7)
    u = torch.rand(2, 2, 5, 5, generator=g) + 0.1
    v = torch.rand(3, 2, 3, 3, generator=g) + 0.1
    a = torch.tensor(2.0, requires_grad=True)

    def f(alpha):
        op = MaxOp("lse")
        op.alpha_param = alpha
        return branch(u, v, op)

    assert torch.autograd.gradcheck(f, (a,))


@pytest.mark.parametrize("form", ["bm4", "bm15"])
@pytest.mark.parametrize("kind", ["max", "lse"])
def test_gradcheck_layers(form, kind):
    kw = {"learn_corr": True} if form == "bm15" else {}
    layer = convert(_conv(2, 3, 3), form, op=MaxOp(kind, alpha=2.0), **kw).double()
    g = torch.Generator().manual_seed(8)
    x = (torch.rand(2, 2, 5, 5, generator=g) + 0.05).requires_grad_(True)
    assert torch.autograd.gradcheck(layer, (x,))
    names = [n for n, _ in layer.named_parameters()]
    vals = tuple(p.detach().clone().requires_grad_(True) for _, p in layer.named_parameters())

    def f(*ps):
        return torch.func.functional_call(layer, dict(zip(names, ps, strict=True)), (x.detach(),))

    assert torch.autograd.gradcheck(f, vals)


def test_all_zero_windows_give_finite_gradients():
    x = torch.zeros(2, 3, 6, 6, requires_grad=True)
    for kind in KINDS:
        layer = convert(_conv(), "bm15", op=MaxOp(kind, alpha=64.0)).double()
        y = layer(x)
        y.sum().backward()
        assert torch.isfinite(y).all()
        assert torch.isfinite(x.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
        x.grad = None


def test_snap_corr_and_folded_bias():
    bm = convert(_conv(), "bm15", dx=0.0, learn_corr=True).double()
    with torch.no_grad():
        bm.corr_x.fill_(0.3)
    assert bm.snap_corr() == 0.25
    assert not bm.corr_x.requires_grad
    x = _relu_input((2, 3, 8, 8))
    e = branch(x + bm.dx, bm.w_pos(), bm.op)
    ref = e - bm.corr_x * bm.window_sum(x) + bm.folded_bias().view(1, -1, 1, 1)
    torch.testing.assert_close(bm(x), ref)


def test_corr_channels_snap_to_integer_exponents():
    """Per-channel corrections: ``corr_x * 2**e_c`` per output channel, ``e_c`` integers after
    :meth:`snap_corr`, the forward exactly the formula with one coefficient per channel."""
    bm = convert(_conv(), "bm15", dx=0.0, corr_channels=True).double()
    with torch.no_grad():
        bm.corr_log.copy_(torch.tensor([0.1, -0.07, 0.2, 0.0, -0.3]))
    bm.snap_corr()
    e = bm.corr_exponents()
    assert torch.equal(e, e.round()) and e.tolist() == [2.0, -1.0, 3.0, 0.0, -5.0]
    assert not bm.corr_log.requires_grad
    x = _relu_input((2, 3, 8, 8))
    c = (bm.corr_x * 2.0**e).view(1, -1, 1, 1)
    ref = branch(x, bm.w_pos(), bm.op) - c * bm.window_sum(x) + bm.folded_bias().view(1, -1, 1, 1)
    torch.testing.assert_close(bm(x), ref)


def test_convert_forms():
    layer = _lin()
    assert isinstance(convert(layer, "bm15"), BM15Layer)
    assert isinstance(convert(layer, "bm4"), BM4Layer)
    back = convert(convert(layer, "bm4"), "classical")
    torch.testing.assert_close(back.weight, layer.weight)
    with pytest.raises(ValueError, match="form"):
        convert(layer, "bm3")


def test_hard_max_without_tropical_gemm_matches(monkeypatch):
    """The accelerator path (products materialised chunk by chunk, used on GPUs) gives the same
    values and gradients as tropical-gemm."""
    import model.maxops as mo

    torch.manual_seed(3)
    u = torch.rand(2, 4, 7, 7, dtype=torch.float64, requires_grad=True)
    v = (torch.rand(5, 4, 3, 3, dtype=torch.float64) + 0.1).requires_grad_(True)
    y1 = mo.maxtimes_conv(u, v)
    g1 = torch.autograd.grad(y1.sum(), (u, v))
    monkeypatch.setattr(mo, "_tg", None)
    y2 = mo.maxtimes_conv(u, v)
    g2 = torch.autograd.grad(y2.sum(), (u, v))
    assert torch.equal(y1, y2)
    for a, b in zip(g1, g2, strict=True):
        assert torch.allclose(a, b)


def _hard_max(mo, u, v):
    uu, vv = u.clone().requires_grad_(True), v.clone().requires_grad_(True)
    y = mo.maxtimes_conv(uu, vv)
    g = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)  # distinct per output
    return (y.detach(), *torch.autograd.grad((y * g).sum(), (uu, vv)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape", [((3, 5, 9, 8), (20, 5, 3, 3)), ((2, 3, 6, 6), (32, 3, 2, 2)), ((4, 37), (10, 37))]
)
def test_native_hard_max_matches_the_portable_paths(monkeypatch, dtype, shape):
    """The native kernel (model/native/kernels.cc) gives the values and the argmax (ties
    included: most inputs are 0, so many windows tie at 0) of the materialised products, and
    through them the same gradients; output counts that are not a multiple of its vector and
    widths that leave a remainder of positions included."""
    import model.maxops as mo
    from model.native import kernels

    if kernels() is None:
        pytest.skip("no C++ compiler here")
    monkeypatch.setattr(mo, "_tg", None)  # native whatever the SIMD width; else materialised
    torch.manual_seed(5)
    su, sv = shape
    u = torch.rand(su, dtype=dtype)
    u[u < 0.7] = 0
    v = torch.rand(sv, dtype=dtype) + 0.05
    native = _hard_max(mo, u, v)
    monkeypatch.setattr(mo, "_native_lib", lambda u: None)
    portable = _hard_max(mo, u, v)
    assert torch.equal(native[0], portable[0])
    for a, b in zip(native[1:], portable[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "xs, ws",
    [((3, 1, 9, 7), (20, 1, 3, 3)), ((2, 5, 6, 8), (16, 5, 2, 2)), ((2, 17, 7, 7), (3, 17, 5, 5))],
)
def test_native_float64_convolution_matches_torch(xs, ws):
    """The smooth branches' float64 convolution and both its gradients (native kernels) against
    PyTorch's, on shapes that pad the outputs and the channels and leave positions over."""
    import model.maxops as mo

    x, w = torch.rand(xs, dtype=torch.float64), torch.rand(ws, dtype=torch.float64)
    lib = mo._native_f64(x, w)
    if lib is None:
        pytest.skip("no native kernels here")
    y = mo._native_conv(lib, x, w)
    g = torch.rand(y.shape, dtype=torch.float64)
    gx, gw = mo._native_conv_backward(lib, g, x, w, True, True)
    ref_gx, ref_gw, _ = torch.ops.aten.convolution_backward(
        g, x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [True, True, False]
    )
    torch.testing.assert_close(y, F.conv2d(x, w), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, ref_gx, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-12, atol=1e-12)
    assert mo._native_conv_backward(lib, g, x, w, False, True)[0] is None


def _smooth(mo, u, v, kind):
    op = MaxOp(kind, alpha=1.3, learnable=True)
    uu, vv = u.clone().requires_grad_(True), v.clone().requires_grad_(True)
    y = mo.branch(uu, vv, op)
    g = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    return (y.detach(), *torch.autograd.grad((y * g).sum(), (uu, vv, *op.parameters())))


@pytest.mark.parametrize("kind", ["lse", "lmorph", "smorph"])
@pytest.mark.parametrize("shape", [((3, 5, 9, 8), (20, 5, 3, 3)), ((4, 37), (10, 37))])
def test_native_smooth_passes_match_the_portable_path(monkeypatch, kind, shape):
    """The smooth branches' fused float32 passes (native kernels): the values and the input,
    weight and alpha gradients of the PyTorch chains, to float32 rounding; an all-zero sample
    (empty windows), sparse inputs and output counts that leave a vector's remainder included."""
    import model.maxops as mo

    torch.manual_seed(7)
    su, sv = shape
    u, v = torch.rand(su, dtype=torch.float32), torch.rand(sv, dtype=torch.float32)
    u[u < 0.5] = 0
    u[0] = 0
    if mo._native_ew(u, v) is None:
        pytest.skip("no native kernels here")
    native = _smooth(mo, u, v, kind)
    monkeypatch.setattr(mo, "_native_ew", lambda un, vn: None)
    portable = _smooth(mo, u, v, kind)
    assert len(native) == 4
    for a, b in zip(native, portable, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6 * float(b.abs().max()))
    assert native[0][0].abs().max() == 0


@pytest.mark.parametrize("kind", ["lse", "smorph"])
def test_native_smooth_passes_split_over_threads(monkeypatch, kind):
    """With several intra-op threads the passes split their work: the same values and gradients
    as on one thread (alpha's summed in another order), and as the PyTorch chains."""
    import model.maxops as mo

    torch.manual_seed(8)
    u = torch.rand(8, 8, 40, 40, dtype=torch.float32)  # 102,400 inputs: three parts
    v = torch.rand(20, 8, 3, 3, dtype=torch.float32)
    u[u < 0.5] = 0
    if mo._native_ew(u, v) is None:
        pytest.skip("no native kernels here")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        split = _smooth(mo, u, v, kind)
        torch.set_num_threads(1)
        one = _smooth(mo, u, v, kind)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(split[:3], one[:3], strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(split[3], one[3], rtol=1e-5, atol=0)
    monkeypatch.setattr(mo, "_native_ew", lambda un, vn: None)
    portable = _smooth(mo, u, v, kind)
    for a, b in zip(split, portable, strict=True):  # the weight gradient sums 11,552 windows
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5 * float(b.abs().max()))


def test_native_exp_and_log_are_accurate():
    """The kernels' own single-precision exp and log (behind ``x ** a``): ln x within 2 ulp
    (absolute where ``|ln x| < 1``) over normal and subnormal x; ``x ** a`` within 4 ulp times
    ``1 + |a ln x|`` (what the rounding of ``ln x`` carries through ``exp``); 0 at 0."""
    import model.maxops as mo

    f32 = torch.float32
    x = torch.rand(50_103, dtype=f32)
    x[50_000:50_100] *= 1e-38  # subnormal
    x[50_100:] = torch.tensor([0.0, 1.0, 2**-149])
    lib = mo._native_ew(x, x)
    if lib is None:
        pytest.skip("no native kernels here")
    xd = x.double()
    pos = xd > 0
    for a in (0.7, 1.0, 2.5):
        p, lx, _ = mo._nat_powers(lib, x, a, "smorph")
        ulp = torch.finfo(torch.float32).eps
        ref = xd[pos].log()
        assert ((lx.double()[pos] - ref).abs() / (ref.abs().clamp(min=1) * ulp)).max() <= 2
        ref = xd.pow(a)
        big = ref > 1e-30
        err = (p.double()[big] - ref[big]).abs() / ref[big]
        assert (err / (1 + a * xd[big].log().abs())).max() <= 4 * ulp
        assert p[x == 0].eq(0).all() and lx[x == 0].eq(0).all()


def test_native_kernel_falls_back_when_it_cannot_be_built(monkeypatch, tmp_path):
    """No compiler that works: one warning, the portable path, the same values."""
    import model.maxops as mo
    from model import native

    torch.manual_seed(6)
    u, v = torch.rand(2, 3, 5, 5), torch.rand(4, 3, 3, 3) + 0.1
    monkeypatch.setattr(native, "_lib", False)
    monkeypatch.setenv("BM_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")
    with pytest.warns(UserWarning, match="native kernels unavailable"):
        y = mo.maxtimes_conv(u, v)
    assert native.kernels() is None and not list(tmp_path.iterdir())  # nothing half-written
    monkeypatch.setattr(native, "_lib", False)
    monkeypatch.setenv("BM_NATIVE", "0")
    assert native.kernels() is None
    cols = F.unfold(u, 3)  # (B, C*k*k, P)
    ref = (cols[:, None] * v.reshape(1, 4, -1, 1)).amax(2).view(2, 4, 3, 3)
    assert torch.equal(y, ref)


def test_lse_far_below_the_sample_scale_has_finite_gradients():
    """A window whose products are ~1e-5 of the sample's largest at alpha = 64 (a subnormal
    ``sum p**alpha``) used to overflow the backward pass (inf * 0 = NaN)."""
    u = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    u[0, 0, 0, 0] = 1.0
    u[0, 0, 4:, 4:] = 1e-5
    u.requires_grad_(True)
    v = torch.ones(1, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    y = branch(u, v, MaxOp("lse", alpha=64.0))
    gu, gv = torch.autograd.grad(y.sum(), (u, v))
    assert torch.isfinite(gu).all() and torch.isfinite(gv).all()
    assert float(y[0, 0, 4, 4].detach()) < 2e-3  # floored window: the stated absolute bound


@pytest.mark.parametrize("kind", ["lse", "smorph", "lmorph"])
@pytest.mark.parametrize("geom", ["conv", "linear"])
@pytest.mark.parametrize("alpha", [1.0, 2.5, 40.0])
def test_fused_branch_matches_the_generic_path(kind, geom, alpha):
    """The fused smooth branch (hand-written backward) gives the generic autograd path's values
    and input, weight and alpha gradients, empty and far-below-scale windows included."""
    g = torch.Generator().manual_seed(9)
    if geom == "conv":
        u = torch.rand(3, 3, 7, 7, generator=g)
        u[1] = 0
        u[2, :, :3] *= 1e-4
        v = torch.rand(5, 3, 3, 3, generator=g)
        v[0, 1] = 0
    else:
        u = torch.rand(4, 12, generator=g)
        u[1] = 0
        u[2] *= 1e-4
        v = torch.rand(5, 12, generator=g)
    outs = []
    for learn, generic in ((False, False), (True, False), (True, True)):
        op = MaxOp(kind, alpha=alpha, learnable=learn)
        uu, vv = u.clone().requires_grad_(True), v.clone().requires_grad_(True)
        y = branch(uu, vv, op, generic=generic)
        w = torch.linspace(-1, 1, y.numel()).view_as(y)
        wrt = (uu, vv, op.alpha_param) if learn else (uu, vv)
        outs.append((y.detach(), *torch.autograd.grad((y * w).sum(), wrt)))
    fixed, fused, ref = outs
    for a, b in zip((*fixed, *fused[:3]), ref[:3] * 2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-300)
    # alpha's gradient: a sum over every window, in another order
    assert ref[3] != 0
    torch.testing.assert_close(fused[3], ref[3], rtol=1e-5 if alpha <= 4 else 1e-10, atol=0)
