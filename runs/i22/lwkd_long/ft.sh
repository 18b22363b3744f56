#!/bin/sh
# Issue 22: the layer-wise KD stack of variant a (runs/i22/lwkd_long/a/after_layer4.pt, five 1.5-BM
# hard-max convolutions, classifier classical) fine-tuned end to end as the shipped stack was:
# CE + soft CE from the teacher, no feature MSE, 8 epochs from 5e-4 (cosine).
exec .venv/bin/python -m model.train --method finetune --init runs/i22/lwkd_long/a/after_layer4.pt \
    --teacher runs/recipe_long/teacher/model.pt --out runs/i22/lwkd_long/a_ft --beta 0 \
    --epochs 8 --keep 5 --lr 5e-4 --data-dir ../shared/data/mnist --threads 1 --no-progress
