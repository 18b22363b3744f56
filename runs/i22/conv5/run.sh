#!/bin/sh
# Issue 22 probe: the conv5 stage of runs/i22/lwkd_long/a again, with a lever (seeded by seed.py).
# sh runs/i22/conv5/run.sh lse|joint|joint2  (joint: conv4 trains with conv5; joint2: conv3, conv4)
set -e
v=$1
case $v in
  lse) extra="--last-op lse --last-alpha-end 64 --last-max-epochs 4" ;;
  joint) extra="--last-joint 1" ;;
  joint2) extra="--last-joint 2" ;;
  *) echo "run.sh: lse, joint or joint2" >&2; exit 2 ;;
esac
[ -f runs/i22/conv5/$v/ckpt.pt ] || PYTHONPATH=. .venv/bin/python runs/i22/conv5/seed.py runs/i22/conv5/$v
exec .venv/bin/python -m model.train --method lwkd --teacher runs/recipe_long/teacher/model.pt \
    --out runs/i22/conv5/$v --form bm15 --op max --dx 0 --keep 5 \
    --layer-epochs 8,8,10,12,15 --final-epochs 0 --beta 1 --cache-limit-gb 7 $extra \
    --data-dir ../shared/data/mnist --threads 1 --no-progress
