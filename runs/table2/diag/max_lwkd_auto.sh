#!/bin/sh
# Issue 23: the authors' MAX / layer-wise KD cell (runs/table2/authors/max_lwkd, collapsed at
# conv5's refit) rerun whole with --refit-gain auto. Resumable: rerun the same command.
# It is the cell's command: the run moved to the cell's folder
# (python -m model.experiments table2 --only max_lwkd).
exec .venv/bin/python -m model.train --out runs/table2/authors/max_lwkd --form bm15 \
    --teacher runs/recipe_long/teacher/model.pt --keep 5 --method lwkd --op max --kd-norm \
    --kd-temp 4 --layer-epochs 3,3,4,4,4,8 --final-epochs 10 --final-lr 5e-4 --refit-gain auto \
    --threads 1 --seed 0 --no-progress --data-dir ../shared/data/mnist
