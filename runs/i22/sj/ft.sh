#!/bin/sh
# Issue 22: the stage-joint run's stack (runs/i22/sj/a/after_layer4.pt) fine-tuned end to end as
# runs/i22/conv5/ft.sh: CE + soft CE from the teacher, 8 epochs from 5e-4 (cosine).
# sh runs/i22/sj/ft.sh NAME [extra model.train options]   (writes runs/i22/sj/NAME)
name=$1; shift
exec .venv/bin/python -m model.train --method finetune --init runs/i22/sj/a/after_layer4.pt \
    --teacher runs/recipe_long/teacher/model.pt --out runs/i22/sj/$name --beta 0 \
    --epochs 8 --keep 5 --lr 5e-4 --data-dir ../shared/data/mnist --threads 1 --no-progress "$@"
