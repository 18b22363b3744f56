"""From a trained float network to the integer exports that ``hw/`` builds.

Two targets, both read by :mod:`model.reference`:

- ``bm``: the integer 1.5-branch BM network (a :class:`~model.params.BMParams` preset) from a
  network of :class:`~model.layers.BM15Layer` s with the hard max.
- ``mac``: the int8 multiply-accumulate baseline (a :class:`~model.params.MACParams` preset) from
  the classical teacher (``nn.Conv2d`` / ``nn.Linear``).

Scales
------
Layer ``l`` reads unsigned codes ``x`` standing for float activations ``x * sigma_l``. The input
image's codes are the pixels (``uint8 >> pixel_shift``) and ``sigma_0 = 2**(pixel_shift - 8)``,
since the float nets read ``pixel / 256``. Every layer's accumulator stands for its float
pre-activation ``z`` times ``A_l``; the rounding shift ``out_shift = s`` gives codes
``z * A_l / 2**s``, so ``sigma_{l+1} = 2**s / A_l``.

BM layer. The float layer computes ``z = max_i (x_i + dx) w_pos_i - corr_x * sum_i x_i + fb``
(``fb`` = :meth:`~model.layers.BM15Layer.folded_bias`). With ``k = 2**c_shift / corr_x`` and
``A = k / sigma_l``:

- ``Lw = round(2**f * log2(w_pos * k))`` (clamped to ``w_log_bits``), so the exp unit gives
  ``2**((Lx + Lw) / 2**f) ~ x * w_pos * k = (x * sigma_l) * w_pos * A``;
- the correction ``corr_x * sigma_l * S * A = S << c_shift`` is a shift for any ``corr_x > 0``
  (``k`` absorbs it; a power-of-two ``corr_x`` makes every ``sigma`` a power of two);
- ``bias = round(fb * A)``;
- ``sigma_{l+1} = 2**(s - c_shift) * corr_x * sigma_l``: calibration picks the power of two
  ``d = s - c_shift`` so that the chosen activation percentile on training images maps to
  ``a_max``, then the largest ``c_shift`` (the most accumulator precision) for which the branch
  output, the log weights and the bias stay inside ``exp_bits``, ``w_log_bits`` and ``bias_bits``
  with a factor-2 margin over the calibration maxima.

The float ``dx`` is replaced by the preset's integer ``dx`` (0: a zero code is the log unit's
zero flag); the ``n*dx*dw`` and ``corr_w * sum w`` terms are already in ``fb``.

MAC layer. Weights ``w_int = round(w * 2**q)`` with the per-layer power of two ``2**q`` that maps
``max|w|`` into ``w_bits``; ``A = 2**q / sigma_l``; ``bias = round(b * A)``; the same
activation calibration picks ``d`` with ``sigma_{l+1} = 2**d * sigma_l`` and ``s = q + d``.

The last layer outputs logits with the smallest ``out_shift`` that keeps them inside ``acc_bits``.

If post-training quantization loses more than ``--qat-threshold`` (0.1 pp) of accuracy on the
calibration-held-out images, :func:`qat_finetune` fine-tunes the float network through a
fake-quantized forward (straight-through estimators for rounding, the log unit and the weight
codes), then quantizes again.

CLI: ``python -m model.quantize --checkpoint C --out F --arith bm|mac [--preset P] ...``. A
ResNet-22 checkpoint (``model.train_cifar``) goes to :mod:`model.quantize.resnet`, the integer
ResNet of :mod:`model.reference.resnet`, in the same export format.
"""

from __future__ import annotations

from .cli import load_float_net, main, parse_args
from .integer import head_neuron, quantize, quantize_bm, quantize_mac
from .qat import float_logits, fq_forward, int_logits, qat_finetune
from .stages import (
    LayerStats,
    QuantizeError,
    Stage,
    calibrate,
    check_stages,
    float_forward,
    stages_of,
    to_float_input,
)

__all__ = [
    "QuantizeError",
    "Stage",
    "stages_of",
    "float_forward",
    "to_float_input",
    "check_stages",
    "LayerStats",
    "calibrate",
    "quantize_bm",
    "head_neuron",
    "quantize_mac",
    "quantize",
    "int_logits",
    "float_logits",
    "fq_forward",
    "qat_finetune",
    "load_float_net",
    "parse_args",
    "main",
]
