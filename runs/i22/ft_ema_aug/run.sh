#!/bin/sh
# Issue 22 lever: the 97.71 % stack (runs/gpu/ft_keep5) fine-tuned with its own teacher's logits
# (T = 4), shifts (2 px) and small rotations (5 degrees), and an EMA of the weights (0.999).
# Resumable: rerun the same script.
set -e
PY=${PY:-.venv/bin/python}
D=${BM_DATA_DIR:-../shared/data/mnist}
$PY -m model.train --method finetune --init runs/gpu/ft_keep5/model.pt \
    --teacher runs/lenet_classical/model.pt --form bm15 --op max --dx 0 --keep 5 --epochs 10 \
    --lr 1e-4 --beta 0 --kd-temp 4 --augment --rot-deg 5 --ema 0.999 --threads 1 \
    --data-dir $D --out runs/i22/ft_ema_aug/ft --no-progress
