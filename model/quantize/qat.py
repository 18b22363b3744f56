"""Integer and float logits of a set; quantization-aware fine-tuning (fake-quantized forward)."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from ..export import NetworkExport
from ..params import BMParams
from ..reference import ref_log, ref_network_batch
from .stages import float_forward, to_float_input

__all__ = ["int_logits", "float_logits", "fq_forward", "qat_finetune"]


def int_logits(exp: NetworkExport, images, *, batch: int = 500) -> np.ndarray:
    """Integer logits of uint8 images through the batched reference."""
    codes = exp.codes(images)
    out = [
        ref_network_batch(exp.params, exp.layers, exp.tensors, codes[i : i + batch])
        for i in range(0, len(codes), batch)
    ]
    return np.concatenate(out)


@torch.no_grad()
def float_logits(stages, images, *, batch: int = 500) -> np.ndarray:
    out = [
        float_forward(stages, to_float_input(images[i : i + batch])).numpy()
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(out)


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.floor(x + 0.5)

    @staticmethod
    def backward(ctx, g):
        return g


def _fq_codes(x, sigma, a_max):
    """Float activations -> codes (rounded, saturated), gradient straight through inside."""
    return _RoundSTE.apply(x / sigma).clamp(0, a_max)


class _LogUnitSTE(torch.autograd.Function):
    """codes -> ``2**(Lx / 2**f)`` from the log unit (exact table), gradient straight through."""

    @staticmethod
    def forward(ctx, codes, table):
        idx = codes.detach().long().clamp(0, table.numel() - 1)
        return table[idx]

    @staticmethod
    def backward(ctx, g):
        return g, None


def fq_forward(stages, spec_layers, infos, p: BMParams, x: torch.Tensor) -> torch.Tensor:
    """Fake-quantized BM forward: codes, log-unit values and log-weight codes as in the reference.

    The max-times branch of the float layer sees ``sigma * 2**(Lx/2**f)`` and
    ``2**(Lw/2**f) / k``, so its product is ``2**((Lx+Lw)/2**f) / A`` exactly; the correction
    sees the codes. Only the exp table's rounding and floor are not modelled.
    """
    codes_all = np.arange(p.a_max + 1)
    lx, zx = ref_log(p, codes_all)
    table = torch.tensor(np.where(zx, 0.0, 2.0 ** (lx / (1 << p.log_frac))), dtype=torch.float32)
    from ..maxops import branch

    for st, spec, inf in zip(stages, spec_layers, infos, strict=True):
        m = st.module
        sigma, kk = inf["sigma_in"], inf["k"]
        if spec.kind == "linear" and x.dim() > 2:
            x = x.flatten(1)
        codes = _fq_codes(x, sigma, p.a_max)
        u = _LogUnitSTE.apply(codes, table) * sigma
        if spec.neuron != "bm15":  # the lns / bm2 classifier: signed log-coded weights
            gain = torch.tensor(inf["log_offset_gain"], dtype=m.weight.dtype)[:, None]
            lw = _RoundSTE.apply((1 << p.log_frac) * torch.log2(m.weight.abs() * kk / gain))
            lw = lw.clamp(p.w_log_min, p.w_log_max)
            wq = torch.sign(m.weight) * 2.0 ** (lw / (1 << p.log_frac)) / kk
            if spec.neuron == "lns":
                x = F.linear(u, wq, m.bias)
            else:
                o = wq.shape[0]
                wpn = torch.cat([wq.clamp(min=0), (-wq).clamp(min=0)], 0)
                bp = branch(u, wpn, m.op)
                x = bp[:, :o] - bp[:, o:] + m.bias
            continue
        lw = _RoundSTE.apply((1 << p.log_frac) * torch.log2(m.w_pos() * kk))
        lw = lw.clamp(p.w_log_min, p.w_log_max)
        wq = 2.0 ** (lw / (1 << p.log_frac)) / kk
        e = branch(u, wq, m.op)
        s = m.window_sum(codes * sigma)
        z = e - m.corr_x * s + m._bias_shape(m.folded_bias())
        a = F.relu(z) if st.relu else z
        if st.pool > 1:
            a = F.max_pool2d(a, st.pool)
        x = a
    return x


def qat_finetune(
    stages,
    layers,
    infos,
    p: BMParams,
    x_train,
    y_train,
    *,
    epochs: float = 1.0,
    lr: float = 1e-4,
    batch: int = 64,
    seed: int = 0,
    log=print,
    time_limit: float | None = None,
):
    """Fine-tune the float BM net through the fake-quantized forward (scales held fixed)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = [q for st in stages for q in st.module.parameters() if q.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    steps = int(epochs * len(x_train) / batch)
    t0 = time.time()
    for step in range(steps):
        idx = rng.integers(0, len(x_train), batch)
        x = to_float_input(x_train[idx])
        y = torch.from_numpy(y_train[idx].astype(np.int64))
        loss = F.cross_entropy(fq_forward(stages, layers, infos, p, x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            log(
                f"qat step {step}/{steps} loss {float(loss.detach()):.4f} "
                f"({time.time() - t0:.0f} s)"
            )
        if time_limit is not None and time.time() - t0 > time_limit:
            log(f"qat stopped at the time limit after {step + 1} steps")
            break
