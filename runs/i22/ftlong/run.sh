#!/bin/sh
# Issue 22: is the shipped stack (runs/i22/sj/a/after_layer4.pt; 99.00 % of the training images
# after its 8-epoch fine-tune) limited by optimisation? The same fine-tune, twice as long and
# twice as hot: 16 epochs from 1e-3 (cosine), CE + soft CE from the teacher. Resumable.
exec .venv/bin/python -m model.train --method finetune --init runs/i22/sj/a/after_layer4.pt \
    --teacher runs/recipe_long/teacher/model.pt --out runs/i22/ftlong/a --beta 0 \
    --epochs 16 --keep 5 --lr 1e-3 --data-dir ../shared/data/mnist --threads 1 --no-progress
