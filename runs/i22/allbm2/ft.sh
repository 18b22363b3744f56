#!/bin/sh
# Issue 22, option (a) probe, step 2: runs/i22/allbm2/a's stack fine-tuned end to end as the
# shipped one (runs/i22/ftlong/run.sh): 16 epochs from 1e-3 (cosine), CE + soft CE. Resumable.
exec .venv/bin/python -m model.train --method finetune --init runs/i22/allbm2/a/after_layer4.pt \
    --teacher runs/recipe_long/teacher/model.pt --out runs/i22/allbm2/ft --beta 0 \
    --epochs 16 --keep 5 --lr 1e-3 --data-dir ../shared/data/mnist --threads 1 --no-progress
