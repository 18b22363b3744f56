#!/bin/sh
# Issue 22 probe for a decision: conv1..conv4 1.5-BM (runs/i22/lwkd_long/a/after_layer3.pt), conv5
# and the classifier classical (both would be lns: log-domain sums), fine-tuned end to end as a_ft.
exec .venv/bin/python -m model.train --method finetune --init runs/i22/lwkd_long/a/after_layer3.pt \
    --teacher runs/recipe_long/teacher/model.pt --out runs/i22/conv5/ft_keep45 --beta 0 \
    --epochs 6 --keep 4,5 --lr 5e-4 --data-dir ../shared/data/mnist --threads 1 --no-progress
