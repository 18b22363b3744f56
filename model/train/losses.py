"""The losses: cross-entropy, logit distillation, and the per-layer KD of section 4.1."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..nets import LeNet
from .config import TrainConfig

__all__ = ["ce_loss", "ce_loss_fn", "logit_kd_loss_fn", "centred", "feature_mse", "soft_ce",
           "kd_loss_fn", "partial_pre"]


def ce_loss(net, xb, yb, idx):
    return F.cross_entropy(net(xb), yb)


def ce_loss_fn(cfg: TrainConfig):
    """Cross-entropy against the labels, with the config's label smoothing."""
    if not cfg.label_smoothing:
        return ce_loss

    def f(net, xb, yb, idx):
        return F.cross_entropy(net(xb), yb, label_smoothing=cfg.label_smoothing)

    return f


def logit_kd_loss_fn(cfg: TrainConfig, teacher: LeNet):
    """``CE(y_s, y) + kd_weight * T**2 * KL(softmax(y_t / T) || softmax(y_s / T))``: the
    student's cross-entropy (with the config's label smoothing) plus logit distillation from the
    teacher at temperature ``T = kd_temp`` (Hinton et al.), on the same (augmented) batch."""
    t_ = cfg.kd_temp

    def f(net, xb, yb, idx):
        with torch.no_grad():
            tl = teacher(xb)
        sl = net(xb)
        ce = F.cross_entropy(sl, yb, label_smoothing=cfg.label_smoothing)
        return ce + cfg.kd_weight * soft_ce(sl, tl, t_)

    return f


def centred(logits: torch.Tensor) -> torch.Tensor:
    """Logits minus their mean over the classes.

    A 1.5-BM classifier's window-sum correction ``corr_x * sum x`` is the same for every class:
    it moves all logits together and changes neither the softmax nor the prediction, so logits
    are compared to the teacher's only up to such a shift.
    """
    return logits - logits.mean(1, keepdim=True)


def feature_mse(s: torch.Tensor, t: torch.Tensor, norm: bool) -> torch.Tensor:
    """``MSE(s, t)``, divided by the teacher layer's variance when ``norm`` (so that every
    layer's term is about 1 at the start, whatever its scale, and none drowns the others or the
    cross-entropy)."""
    mse = F.mse_loss(s, t)
    return mse / t.detach().var().clamp(min=1e-8) if norm else mse


def partial_pre(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The student's pre-activations ``s`` with each element at or below a teacher value ``t``
    that is at or below zero replaced by ``t`` (no loss, no gradient there): the partial L2 of
    Heo et al., "A Comprehensive Overhaul of Feature Distillation" (ICCV 2019), at margin 0.
    Both are silenced by the ReLU there; elsewhere, and where the teacher is positive and the
    student is not, it is the MSE before the ReLU."""
    return torch.where((s <= t) & (t <= 0), t, s)


def soft_ce(s_logits: torch.Tensor, t_logits: torch.Tensor, temp: float) -> torch.Tensor:
    """The student against the teacher's soft labels: ``CE(y_s, softmax(y_t))`` at ``temp`` 0,
    else Hinton's ``T**2 * KL(softmax(y_t / T) || softmax(y_s / T))``."""
    if temp <= 0:
        return F.cross_entropy(s_logits, F.softmax(t_logits, 1))
    kl = F.kl_div(F.log_softmax(s_logits / temp, 1), F.log_softmax(t_logits / temp, 1),
                  log_target=True, reduction="batchmean")
    return temp * temp * kl


def kd_loss_fn(cfg: TrainConfig, teacher: LeNet, layers: bool = True):
    """Section 4.1: ``beta * sum_l MSE(y_s^l, y_t^l) + w * (CE(y_s, y_t) + CE(y_s, y))``, with
    ``beta = cfg.beta`` and ``w = cfg.ce_weight``. ``cfg.kd_norm`` divides each layer's MSE by
    the teacher layer's variance (:func:`feature_mse`); ``cfg.kd_temp`` > 0 makes the soft term
    a distillation at that temperature (:func:`soft_ce`). The logits' MSE compares them up to a
    shift common to all classes (:func:`centred`). ``cfg.kd_layers == "pre"`` compares the
    layers before their ReLU, so that a channel the ReLU silences on a batch still learns;
    ``"partial"`` too, but without the elements where the student is at or below a teacher
    value that is itself at or below zero (both silenced: :func:`partial_pre`)."""
    pre = cfg.kd_layers in ("pre", "partial")
    part = cfg.kd_layers == "partial"

    def f(net, xb, yb, idx):
        with torch.no_grad():
            tf = teacher.features(xb, pre=pre)
        sf = net.features(xb, pre=pre)
        mse = 0.0
        if layers:
            mse = sum(feature_mse(partial_pre(s, t) if part else s, t, cfg.kd_norm)
                      for s, t in zip(sf[:-1], tf[:-1], strict=True))
            mse = mse + feature_mse(centred(sf[-1]), centred(tf[-1]), cfg.kd_norm)
        soft = soft_ce(sf[-1], tf[-1], cfg.kd_temp)
        return cfg.beta * mse + cfg.ce_weight * (soft + F.cross_entropy(sf[-1], yb))

    return f
