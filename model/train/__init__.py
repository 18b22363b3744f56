"""One training run: ``python -m model.train --method METHOD --out runs/NAME [options]``.

Methods (METHOD.md section 3; ``--form`` picks the BM neuron, ``--op`` the max approximation):

- ``classical``: train the classical network (the teacher of the other methods).
- ``direct``: train the BM network from scratch by backprop.
- ``layerwise``: Algorithm 1. From a trained classical net, convert each layer in order and
  fine-tune the whole network after each conversion.
- ``layerwise_freeze``: as ``layerwise``, but a converted and fine-tuned layer is frozen.
- ``kd``: knowledge distillation (section 4.1), the all-BM student converted from the teacher,
  ``L = beta * sum_l MSE(y_s^l, y_t^l) + w * (CE(y_s, y_t) + CE(y_s, y))``.
- ``lwkd``: layer-wise KD for BM (section 4.2, Fig. 1). Layer k is converted and trained with
  layers < k frozen, its output fed into the teacher's layers > k (fine-tuned too) giving
  ``output_1``; the teacher alone gives ``output_2``;
  ``L = beta * MSE(student_k, teacher_k) + w * (CE(output_1, y) + CE(output_2, y))``.
- ``finetune``: start from ``--init`` (e.g. a layer-wise KD snapshot ``after_layer4.pt``), convert
  its remaining classical layers (the classifier with LSE from alpha = 1 when ``--last-op lse``,
  annealed to ``--last-alpha-end``, hard max for the last ``--last-max-epochs``; ``--last-form bm4``
  makes it a 4-branch neuron, whose negative branch can inhibit), and train the
  whole student end to end with KD (``--beta`` weighs the per-layer MSE terms).
- ``two_stage``: section 4.4. Run ``--first-method`` (kd or lwkd) with LSE, replace LSE by the
  hard max keeping the weights (measured: "LSE-MAX"), and fine-tune with KD ("MAX").

``--learn-alpha`` makes alpha a trainable scalar per layer for ``--alpha-epochs`` epochs, after
which it is frozen (section 4.3). Every run writes ``config.json`` (the resolved configuration),
``ckpt.pt`` (resumable: rerunning the same command continues), ``model.pt`` (state_dict, net
configuration and result) and ``result.json`` into ``--out``.

Pixels are scaled as ``x = pixel / 256``, so the integer input scale is ``2**-8``.
"""

from __future__ import annotations

from .cli import main, parse_args
from .config import CORR_MIN, METHODS, TrainConfig
from .convert import (
    convert_layer,
    converted,
    load_teacher,
    make_op,
    refit_all,
    refit_layer,
    refit_to,
)
from .data import augment_batch, batches, evaluate, load_data
from .loop import (
    At,
    WeightEMA,
    alpha_schedule,
    alphas,
    cosine_factor,
    fit,
    freeze_alpha,
    run_simple,
    set_alpha,
    train_epochs,
)
from .losses import ce_loss, ce_loss_fn, centred, feature_mse, kd_loss_fn, logit_kd_loss_fn, soft_ce
from .lwkd import cache_inputs, method_lwkd, method_lwkd_full, snapshot
from .methods import (
    channel_head_init,
    layerwise_final,
    method_classical,
    method_direct,
    method_finetune,
    method_kd,
    method_layerwise,
    method_two_stage,
    run_method,
)
from .run import Run, load_model, net_from_dict, net_to_dict, save_model

__all__ = ["CORR_MIN", "METHODS", "TrainConfig", "load_data", "batches", "augment_batch",
           "evaluate", "Run", "net_to_dict", "net_from_dict", "load_model", "save_model",
           "make_op", "converted", "convert_layer", "refit_layer", "refit_to", "load_teacher",
           "refit_all", "At", "cosine_factor", "fit", "train_epochs", "WeightEMA", "alphas",
           "set_alpha",
           "freeze_alpha", "run_simple", "alpha_schedule", "ce_loss", "ce_loss_fn",
           "logit_kd_loss_fn", "centred", "feature_mse", "soft_ce", "kd_loss_fn", "cache_inputs",
           "snapshot", "method_lwkd", "method_lwkd_full", "method_classical", "method_direct",
           "method_kd", "method_layerwise", "layerwise_final", "channel_head_init",
           "method_finetune", "method_two_stage", "run_method", "parse_args",
           "main"]
