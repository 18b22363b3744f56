#!/bin/sh
# Issue 22: the long fine-tune (runs/i22/ftlong/run.sh) with augmentation (random shifts up to
# 2 px, rotations up to 10 degrees, the teacher's soft targets on the same augmented batch).
# ftlong's stack fits its training images (99.55 %) better than its teacher does (99.51 %) yet
# scores 98.27 % on the test set: a generalisation gap. Resumable.
exec .venv/bin/python -m model.train --method finetune --init runs/i22/sj/a/after_layer4.pt \
    --teacher runs/recipe_long/teacher/model.pt --out runs/i22/ftaug/a --beta 0 --augment \
    --epochs 16 --keep 5 --lr 1e-3 --data-dir ../shared/data/mnist --threads 1 --no-progress
