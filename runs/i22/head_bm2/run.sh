#!/bin/sh
# Issue 22: the bm2 classifier trained alone on the shipped BM convolution stack (runs/gpu/ft_keep5,
# the same five 1.5-BM hard-max convolutions as the lns export): converted from its classical
# classifier, LSE from alpha 1 annealed to 64, then the hard max; logit KD from the stack's teacher.
# Resumable: rerun the same script.
set -e
PY=${PY:-.venv/bin/python}
D=${BM_DATA_DIR:-../shared/data/mnist}
$PY -m model.train --method finetune --init runs/gpu/ft_keep5/model.pt \
    --teacher runs/lenet_classical/model.pt --form bm15 --op max --dx 0 --last-form bm4 \
    --train-layers 5 --last-op lse --last-alpha-end 64 --epochs 5 --last-max-epochs 2 \
    --lr 1e-3 --beta 0 --kd-temp 4 --threads 1 --data-dir $D --out runs/i22/head_bm2/ft --no-progress
