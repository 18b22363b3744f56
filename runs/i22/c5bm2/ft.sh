#!/bin/sh
# Issue 22 probe: the 2-branch-conv5 stack (runs/i22/c5bm2/bm4/after_layer4.pt) fine-tuned end to
# end exactly as the 1.5-branch one in runs/i22/sj/ft.sh (8 epochs from 5e-4, cosine, CE + soft CE
# from the teacher), for an end-to-end figure beside sj/ft's 98.07 %. Resumable.
exec .venv/bin/python -m model.train --method finetune --init runs/i22/c5bm2/bm4/after_layer4.pt \
    --teacher runs/recipe_long/teacher/model.pt --out runs/i22/c5bm2/ft --beta 0 \
    --epochs 8 --keep 5 --lr 5e-4 --data-dir ../shared/data/mnist --threads 1 --no-progress
