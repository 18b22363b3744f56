#!/bin/sh
# Issue 23 diagnostic: the authors' LSE-MAX / KD cell (runs/table2/authors/lse-max_kd) with alpha
# learnt from 2.5 instead of 1 (the authors' learnt alpha "barely moved from 2.5"; from 1 it
# stays at its floor, an exactly classical network, whose switch to the hard max is at chance).
# Resumable: rerun the same command.
exec .venv/bin/python -m model.train --out runs/table2/diag/lse-max_kd_a25 --form bm15 \
    --teacher runs/recipe_long/teacher/model.pt --keep 5 --method two_stage --first-method kd \
    --alpha 2.5 --learn-alpha --epochs 5 --layer-epochs 3,3,4,4,4,8 --kd-norm --kd-temp 4 \
    --threads 1 --seed 0 --no-progress --data-dir ../shared/data/mnist
