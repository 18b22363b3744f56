#!/bin/sh
# Issue 22: the best 5-BM-conv stack so far (runs/gpu/ft_keep5, 97.71 % float, LWKD of the old
# teacher + 10 epochs of fine-tune) fine-tuned end to end again from the 99.45 % teacher:
# augmentation, logit KD at T = 4, cosine from 3e-4. Resumable: rerun the same script.
set -e
PY=${PY:-.venv/bin/python}
D=${BM_DATA_DIR:-../shared/data/mnist}
$PY -m model.train --method finetune --init runs/gpu/ft_keep5/model.pt \
    --teacher runs/teacher_aug/model.pt --form bm15 --op max --dx 0 --keep 5 --epochs 12 \
    --lr 3e-4 --augment --kd-temp 4 --threads 2 --data-dir $D --out runs/ft2/ft --no-progress
