#!/bin/sh
# Issue 22: runs/i22/sj/run.sh with two earlier layers training in every stage (--stage-joint 2)
# and every convolution in conv5's (--last-joint 4). Resumable: rerun the same command.
exec .venv/bin/python -m model.train --method lwkd --teacher runs/recipe_long/teacher/model.pt \
    --out runs/i22/sj2/a --form bm15 --op max --dx 0 --keep 5 \
    --layer-epochs 8,8,10,12,15 --stage-joint 2 --last-joint 4 --final-epochs 0 --beta 1 \
    --cache-limit-gb 7 --data-dir ../shared/data/mnist --threads 1 --no-progress
