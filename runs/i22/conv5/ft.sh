#!/bin/sh
# Issue 22: a conv5-stage probe's stack (runs/i22/conv5/V/after_layer4.pt) fine-tuned end to end
# as runs/i22/lwkd_long/ft.sh did: CE + soft CE from the teacher, 8 epochs from 5e-4 (cosine).
# sh runs/i22/conv5/ft.sh joint|joint2
exec .venv/bin/python -m model.train --method finetune --init runs/i22/conv5/$1/after_layer4.pt \
    --teacher runs/recipe_long/teacher/model.pt --out runs/i22/conv5/$1_ft --beta 0 \
    --epochs 8 --keep 5 --lr 5e-4 --data-dir ../shared/data/mnist --threads 1 --no-progress
