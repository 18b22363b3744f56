#!/bin/sh
# Issue 23: the authors' LSE-MAX cells with stage 1's alpha annealed from 1 to 64 (as anneal.sh)
# and --refit-gain auto. Classifier classical, KD normalised. Resumable.
# sh runs/table2/diag/lse-max_auto.sh kd|lwkd
# Superseded: this is now the authors' cells' command (model.experiments table2 --only
# lse-max_kd|lse-max_lwkd), with the switch keeping the weights (--switch-refit none, the
# default since 2026-12-07). The KD run started here continued as runs/table2/authors/lse-max_kd.
exec .venv/bin/python -m model.train --out runs/table2/diag/lse-max_$1_auto --form bm15 \
    --teacher runs/recipe_long/teacher/model.pt --keep 5 --method two_stage --first-method $1 \
    --alpha 1 --alpha-end 64 --epochs 5 --layer-epochs 3,3,4,4,4,8 --kd-norm --kd-temp 4 \
    --refit-gain auto --threads 1 --seed 0 --no-progress --data-dir ../shared/data/mnist
