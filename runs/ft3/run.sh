#!/bin/sh
# Issue 22: runs/gpu/ft_keep5 (97.71 % float) fine-tuned end to end from the 99.45 % teacher
# with logit KD at T = 4 and no augmentation (runs/ft2 shows augmentation costs this stack ~1 pp).
set -e
PY=${PY:-.venv/bin/python}
D=${BM_DATA_DIR:-../shared/data/mnist}
$PY -m model.train --method finetune --init runs/gpu/ft_keep5/model.pt \
    --teacher runs/teacher_aug/model.pt --form bm15 --op max --dx 0 --keep 5 --epochs 8 \
    --lr 2e-4 --kd-temp 4 --threads 2 --data-dir $D --out runs/ft3/ft --no-progress
