#!/bin/sh
# Issue 23: conv5's stage of the authors' MAX / layer-wise KD cell rerun from its start with
# --refit-gain RULE (floor: the cell as run; spread: no channel flattened), 4 epochs as the cell.
# python runs/table2/diag/c5_seed.py RULE && sh runs/table2/diag/c5.sh RULE
exec .venv/bin/python -m model.train --out runs/table2/diag/c5_$1 --form bm15 \
    --teacher runs/recipe_long/teacher/model.pt --keep 5 --method lwkd --op max --kd-norm \
    --kd-temp 4 --layer-epochs 3,3,4,4,4 --final-epochs 0 --refit-gain $1 --threads 1 --seed 0 \
    --no-progress --data-dir ../shared/data/mnist
