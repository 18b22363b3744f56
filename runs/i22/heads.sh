#!/bin/sh
# Issue 22: one max classifier trained alone on the shipped BM convolution stack
# (runs/gpu/ft_keep5, the same five 1.5-BM hard-max convolutions as the lns export): converted
# from its classical classifier, LSE from alpha 1 annealed to 64, then the hard max; logit KD
# from the stack's teacher.  Usage: sh runs/i22/heads.sh bm2|bm15  (resumable: run it again)
set -e
case "${1:-}" in
    bm2) form=bm4 ;;   # the 4-branch neuron on inputs >= 0 is the 2-branch max
    bm15) form=bm15 ;;
    *) echo "usage: sh runs/i22/heads.sh bm2|bm15" >&2; exit 2 ;;
esac
PY=${PY:-.venv/bin/python}
D=${BM_DATA_DIR:-../shared/data/mnist}
$PY -m model.train --method finetune --init runs/gpu/ft_keep5/model.pt \
    --teacher runs/lenet_classical/model.pt --form bm15 --op max --dx 0 --last-form $form \
    --train-layers 5 --last-op lse --last-alpha-end 64 --epochs 5 --last-max-epochs 2 \
    --lr 1e-3 --beta 0 --kd-temp 4 --threads 1 --data-dir $D --out runs/i22/head_$1/ft --no-progress
