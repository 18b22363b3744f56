#!/bin/sh
# Issue 22: layer-wise KD with long stages (as runs/i22/lwkd_long/run.sh a), each stage also
# training the layer before its own (--stage-joint 1), conv5's stage conv3 and conv4 too
# (--last-joint 2: the best of the conv5-stage probes in runs/i22/conv5). Resumable.
exec .venv/bin/python -m model.train --method lwkd --teacher runs/recipe_long/teacher/model.pt \
    --out runs/i22/sj/a --form bm15 --op max --dx 0 --keep 5 \
    --layer-epochs 8,8,10,12,15 --stage-joint 1 --last-joint 2 --final-epochs 0 --beta 1 \
    --cache-limit-gb 7 --data-dir ../shared/data/mnist --threads 1 --no-progress
