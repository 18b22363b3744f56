"""Bit-exact NumPy reference of integer 1.5-branch BM inference and of the int8 MAC baseline.

NumPy only: no torch. This is the golden model. The RTL in ``hw/`` may only do what these
functions do, and these functions only do what adders, comparators, shifts and two small tables
can do. Every stage is a separate function (``ref_log``, ``ref_exp``, ``ref_branch``,
``ref_correction``, ``ref_requant``, ``ref_bm_layer``) so that tests can compare stage by stage.

Integer 1.5-branch BM inference (``p`` is a :class:`model.params.BMParams`)
--------------------------------------------------------------------------
Activations are unsigned codes ``x`` in ``0 .. 2**a_bits - 1``. A float activation is
``x * 2**-e`` for a per-layer power-of-two scale.

1. **Log unit.** ``u = x + dx``. If ``u == 0`` the zero flag is set (log is minus infinity) and
   ``Lx = 0``. Otherwise ``e`` is the position of the leading one of ``u`` (``u_bits`` wide), the
   bits below it are left-aligned and truncated to ``mant_bits`` bits ``m`` (zero-filled when
   fewer exist), and ``Lx = e * 2**f + LOG[m]`` with
   ``LOG[m] = round(2**f * log2(1 + m/2**mant_bits))``.
   ``Lx`` is unsigned, ``lx_bits`` wide, ``f = log_frac`` fractional bits.
2. **Weights** are stored as signed ``w_log_bits`` codes ``Lw = round(2**f * log2((w + dw) * k))``
   where ``k`` folds the layer's power-of-two scales (chosen by quantization), clamped to the
   code range. The most negative code is an ordinary value, not minus infinity.
3. **Branch.** ``M = max_i (Lx_i + Lw_i)`` over the inputs whose zero flag is clear. If every
   input of the window is flagged, the branch is flagged (its exp is 0).
4. **Exp unit.** ``q = M >> f`` (floor), ``r = M & (2**f - 1)``, ``v = EXP[r]`` with
   ``EXP[r] = round(2**t * 2**(r/2**f))``, ``t = exp_table_bits``. The result is
   ``v << (q - t)`` when ``q >= t`` and ``v >> (t - q)`` (floor) otherwise, saturated to
   ``2**exp_bits - 1``. A flagged branch gives 0.
5. **Correction.** ``S = sum_i x_i`` (the raw codes, over the same window); ``dw`` is a power of
   two, so ``dw * sum x`` in accumulator units is ``S << c_shift``. The terms
   ``dx * sum w + n*dx*dw`` and the float bias fold into one integer bias per output channel:
   ``acc = E - (S << c_shift) + bias[c]``, computed exactly: no intermediate overflow, the
   accumulator holds ``exp_max``, ``fan_in * a_max << c_shift`` and the bias at once.
6. **Requantization.** ``y = (acc + 2**(s-1)) >> s`` (``s = out_shift``; no rounding term when
   ``s == 0``), an arithmetic shift, i.e. round half up. A hidden layer saturates ``y`` to
   ``0 .. 2**a_bits - 1``: the saturation at zero is the ReLU. The last layer outputs ``y``
   saturated to a signed ``acc_bits`` logit. Max-pool, where used, is a comparator over codes.

The network's predicted class is the index of the first maximal logit.

The classifier heads (``LayerSpec.neuron``; linear layers only)
-------------------------------------------------------------
The convolutions are always the 1.5-branch neuron above (``neuron = "bm15"``). The classifier
may be one of two other neurons on the same log and exp units. Both store per weight a sign
``s_ci`` (0: positive, 1: negative; the export's ``layer<i>.sign``) beside a signed
``w_log_bits`` magnitude code ``Lw_ci = round(2**f * log2(|w_ci| * k))``, clamped to the code
range (a zero weight takes the most negative code). There is no window-sum correction
(``c_shift`` is 0).

* ``lns``, the log-domain sum: the 1.5-BM neuron at its classical limit (the max replaced by
  the sum), ``z_c = sum_i w_ci x_i + b_c``, with no multiplier:

  1. each term ``T_ci = EXP(Lx_i + Lw_ci)``: the exp unit of step 4 (floor shift, saturating
     to ``exp_bits``), 0 when ``x_i``'s zero flag is set;
  2. ``acc_c = bias_c + sum_i (-1)**s_ci * T_ci``, exact in a signed accumulator of
     :func:`lns_acc_bits` bits (``fan_in * (2**exp_bits - 1) + 2**(bias_bits - 1)`` fits, so it
     never overflows or saturates);
  3. requantization as in step 6, to a signed ``acc_bits`` logit.

* ``bm2``, the 2-branch max (all-morphological): ``z_c = max_i x_i v+_ci - max_i x_i v-_ci +
  b_c`` with ``v+ = max(w, 0)``, ``v- = max(-w, 0)`` (the 4-branch neuron on inputs >= 0):

  1. ``M+_c = max (Lx_i + Lw_ci)`` over the inputs with ``s_ci = 0`` and the zero flag clear,
     ``M-_c`` likewise over ``s_ci = 1``; an empty branch is flagged;
  2. ``acc_c = EXP(M+_c) - EXP(M-_c) + bias_c`` (a flagged branch's exp is 0), exact in
     :func:`bm2_acc_bits` bits;
  3. requantization as in step 6.

Integer MAC baseline (``p`` is a :class:`model.params.MACParams`)
-----------------------------------------------------------------
``acc = sum_i x_i * w_i + bias[c]`` with unsigned ``a_bits`` activations and signed ``w_bits``
weights, exact in ``acc_bits``, then the same requantization as above.
"""

from .batch import (
    batch_bm_layer,
    maxplus_conv,
    maxplus_dtype,
    ref_network_batch,
    window_sums,
)
from .core import (
    bm2_acc_bits,
    im2col,
    lns_acc_bits,
    ref_bm2_acc,
    ref_bm_layer,
    ref_branch,
    ref_correction,
    ref_exp,
    ref_lns_acc,
    ref_log,
    ref_mac_layer,
    ref_maxpool,
    ref_network,
    ref_requant,
    ref_window_sum,
)

__all__ = [
    "ref_log",
    "ref_exp",
    "ref_branch",
    "ref_window_sum",
    "ref_correction",
    "ref_requant",
    "ref_maxpool",
    "im2col",
    "ref_bm_layer",
    "ref_lns_acc",
    "ref_bm2_acc",
    "ref_mac_layer",
    "ref_network",
    "lns_acc_bits",
    "bm2_acc_bits",
    "batch_bm_layer",
    "maxplus_conv",
    "maxplus_dtype",
    "ref_network_batch",
    "window_sums",
]
