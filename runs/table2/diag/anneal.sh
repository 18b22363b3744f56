#!/bin/sh
# Issue 23 diagnostic (announced in stop 32): the authors' LSE-MAX cells with stage 1's alpha
# annealed from 1 to 64 (the all-BM schedule) instead of learnt from 1 (where KD from a classical
# teacher keeps it at its floor, so the switch to the hard max is a conversion from scratch).
# Classifier classical, KD normalised, as the authors' cells. Resumable.
# sh runs/table2/diag/anneal.sh kd|lwkd
exec .venv/bin/python -m model.train --out runs/table2/diag/lse-max_$1_anneal --form bm15 \
    --teacher runs/recipe_long/teacher/model.pt --keep 5 --method two_stage --first-method $1 \
    --alpha 1 --alpha-end 64 --epochs 5 --layer-epochs 3,3,4,4,4,8 --kd-norm --kd-temp 4 \
    --threads 1 --seed 0 --no-progress --data-dir ../shared/data/mnist
