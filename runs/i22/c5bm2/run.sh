#!/bin/sh
# Issue 22 probe: conv5's stage of runs/i22/sj with conv5 converted to FORM (bm4: on ReLU inputs
# the 2-branch max, which can inhibit tap by tap; bm15: the check that the seed repeats sj).
# sh runs/i22/c5bm2/run.sh NAME FORM   (seed first: python runs/i22/c5bm2/seed.py NAME)
exec .venv/bin/python -m model.train --method lwkd --teacher runs/recipe_long/teacher/model.pt \
    --out runs/i22/c5bm2/$1 --form bm15 --last-form $2 --op max --dx 0 --keep 5 \
    --layer-epochs 8,8,10,12,15 --stage-joint 1 --last-joint 2 --final-epochs 0 --beta 1 \
    --cache-limit-gb 7 --data-dir ../shared/data/mnist --threads 1 --no-progress
