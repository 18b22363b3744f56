#!/bin/sh
# Issue 22 probe: 3 more epochs end to end from the shipped float stack at a lower rate, with
# (cc) or without (ctl) a learnt per-output-channel correction exponent. Resumable.
# sh runs/i22/cc/run.sh cc|ctl
case $1 in cc) init=runs/i22/cc/seed.pt ;; ctl) init=runs/i22/sj/ft/model.pt ;; *) exit 2 ;; esac
exec .venv/bin/python -m model.train --method finetune --init $init \
    --teacher runs/recipe_long/teacher/model.pt --out runs/i22/cc/$1 --beta 0 \
    --epochs 3 --keep 5 --lr 2e-4 --data-dir ../shared/data/mnist --threads 1 --no-progress
