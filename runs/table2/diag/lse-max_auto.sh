#!/bin/sh
# Issue 23: the authors' LSE-MAX cells with stage 1's alpha annealed from 1 to 64 (as anneal.sh)
# and --refit-gain auto at the switch to the hard max (the floor rule flattened conv2 and conv5
# there). Classifier classical, KD normalised. Resumable.
# sh runs/table2/diag/lse-max_auto.sh kd|lwkd
exec .venv/bin/python -m model.train --out runs/table2/diag/lse-max_$1_auto --form bm15 \
    --teacher runs/recipe_long/teacher/model.pt --keep 5 --method two_stage --first-method $1 \
    --alpha 1 --alpha-end 64 --epochs 5 --layer-epochs 3,3,4,4,4,8 --kd-norm --kd-temp 4 \
    --refit-gain auto --threads 1 --seed 0 --no-progress --data-dir ../shared/data/mnist
