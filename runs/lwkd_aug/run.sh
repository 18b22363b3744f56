#!/bin/sh
# Issue 22: LWKD of the five convolutions (hard max, dx 0, feature MSE / teacher variance),
# classifier kept classical (the lns head), then an end-to-end fine-tune with augmentation and
# logit KD at T = 4. Resumable: rerun the same script.
set -e
PY=${PY:-.venv/bin/python}
D=${BM_DATA_DIR:-../shared/data/mnist}
$PY -m model.train --method lwkd --teacher runs/teacher_aug/model.pt --form bm15 --op max \
    --dx 0 --keep 5 --layer-epochs 2 --kd-norm --lr 1e-3 --tail-lr 3e-4 --threads 2 \
    --data-dir $D --out runs/lwkd_aug/stage --no-progress
$PY -m model.train --method finetune --init runs/lwkd_aug/stage/model.pt \
    --teacher runs/teacher_aug/model.pt --form bm15 --op max --dx 0 --keep 5 --epochs 6 \
    --lr 5e-4 --augment --kd-temp 4 --threads 2 --data-dir $D --out runs/lwkd_aug/ft --no-progress
