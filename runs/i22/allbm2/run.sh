#!/bin/sh
# Issue 22, option (a) probe: the shipped stack's recipe (runs/i22/sj/run.sh: layer-wise KD, long
# joint stages) with every convolution converted to a 4-branch BM layer (--form bm4; on ReLU
# inputs the 2-branch max, which can inhibit tap by tap) instead of 1.5-branch. Float only: no
# datapath change. Resumable: rerun the same command (checkpoint runs/i22/allbm2/a/ckpt.pt).
# Then the fine-tune: sh runs/i22/allbm2/ft.sh
exec .venv/bin/python -m model.train --method lwkd --teacher runs/recipe_long/teacher/model.pt \
    --out runs/i22/allbm2/a --form bm4 --op max --dx 0 --keep 5 \
    --layer-epochs 8,8,10,12,15 --stage-joint 1 --last-joint 2 --final-epochs 0 --beta 1 \
    --cache-limit-gb 7 --data-dir ../shared/data/mnist --threads 1 --no-progress
