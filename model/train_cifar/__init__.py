"""One CIFAR-10 ResNet-22 run: ``python -m model.train_cifar --method METHOD --out DIR [options]``.

The paper's Table 3 methods on :class:`model.resnet.ResNet22` (METHOD.md sections 3 and 4), with
``--form bm15`` neurons and ``--op`` the max approximation:

- ``classical``: the teacher. SGD with Nesterov momentum, weight decay, cosine learning rate.
- ``direct``: the all-BM network trained from scratch.
- ``kd``: the teacher converted to all-BM (formula (2)) and trained with section 4.1's loss
  ``beta * mean_l MSE(y_s^l, y_t^l) + CE(y_s, softmax y_t) + CE(y_s, y)`` over every layer's
  batch-norm output ``y^l``.
- ``lwkd``: section 4.2. The 23 layers are converted one at a time in the order they run; while
  layer ``k`` trains, layers ``< k`` are frozen (their batch norms too) and the teacher's layers
  ``> k`` are fine-tuned with it, with
  ``beta * MSE(y_s^k, y_t^k) + CE(y_s, softmax y_t) + CE(y_s, y)``.
  ``--final-epochs`` adds a joint KD fine-tune of the whole student.
- ``two_stage``: section 4.4. ``--first-method`` (kd or lwkd) with LSE, then the hard max in
  place of LSE keeping the weights (reported as ``accuracy_lse_max``), then KD with the hard max
  for ``--epochs`` (``accuracy``).

LSE runs start at ``--alpha`` and anneal geometrically to ``--alpha-end`` over the first three
quarters of each training phase.

Data: CIFAR-10 from ``--data-dir`` (see :func:`model.data.load_cifar10`), pixels ``/ 256`` (no
mean subtraction: BM inputs stay non-negative), random crop with 4-pixel zero padding and
horizontal flip, done on the device. ``--subset N`` trains on a seeded random N images and
``--test-subset M`` tests on a seeded random M (the image-folder sets are sorted by class).

Speed and scale: ``--device cuda`` with ``--amp`` runs the classical layers in bfloat16 (the BM
branches stay in float32/64). Under ``torchrun --nproc_per_node N`` the run is data-parallel
(DistributedDataParallel; NCCL on GPUs, gloo on CPUs): each process takes a disjoint share of
every epoch, gradients are averaged, rank 0 writes the files. ``--budget-s`` is a wall-clock
safety net: a phase that reaches it stops early (``budget_hit`` in the result) and layer-wise KD
converts the remaining layers without training them.

Writes ``config.json``, ``train.log`` lines on stdout, ``ckpt.pt`` (resumable per epoch),
``model.pt`` and ``result.json`` into ``--out``.
"""

from .loop import train_phase
from .methods import main, parse_args
from .setup import (
    METHODS,
    CifarConfig,
    augment,
    data_label,
    evaluate,
    load_cifar_tensors,
    load_resnet,
)

__all__ = ["CifarConfig", "METHODS", "parse_args", "main", "load_resnet", "load_cifar_tensors",
           "augment", "evaluate", "data_label", "train_phase"]
