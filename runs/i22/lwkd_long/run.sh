#!/bin/sh
# Issue 22: layer-wise KD with long stages (the authors train many epochs a stage), from the
# recipe's 99.39 % teacher, classifier kept classical (the lns head), inputs cached per stage.
# sh runs/i22/lwkd_long/run.sh a|b   (a: feature MSE weight 1; b: weight 0, CE only)
set -e
v=$1
case $v in a) beta=1 ;; b) beta=0 ;; *) echo "run.sh: variant a or b" >&2; exit 2 ;; esac
exec .venv/bin/python -m model.train --method lwkd --teacher runs/recipe_long/teacher/model.pt \
    --out runs/i22/lwkd_long/$v --form bm15 --op max --dx 0 --keep 5 \
    --layer-epochs 8,8,10,12,15 --final-epochs 4 --beta $beta --cache-limit-gb 7 \
    --data-dir ../shared/data/mnist --threads 1 --no-progress
