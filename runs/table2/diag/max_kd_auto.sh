#!/bin/sh
# Issue 23: the authors' MAX / KD cell (0.8683 with --refit-gain floor: every convolution
# converted at once and refitted; the refit flattens the layers it finds no positive gain for)
# rerun with --refit-gain auto. Resumable: rerun the same command.
# It is the cell's command (python -m model.experiments table2 --protocol authors). Its run,
# started as runs/table2/diag/max_kd_auto, was moved to the cell's folder when it ended.
exec .venv/bin/python -m model.train --out runs/table2/authors/max_kd --form bm15 \
    --teacher runs/recipe_long/teacher/model.pt --keep 5 --method kd --op max --kd-norm \
    --kd-temp 4 --epochs 5 --refit-gain auto \
    --threads 1 --seed 0 --no-progress --data-dir ../shared/data/mnist
