#!/bin/sh
# Issue 22: one max classifier trained alone on a BM convolution stack (default: the shipped one,
# runs/i22/ftlong/a, the five 1.5-BM hard-max convolutions of the lns export): converted from its
# classical classifier, LSE from alpha 1 annealed to 64, then the hard max; logit KD from the
# stack's teacher.  Usage: sh runs/i22/heads.sh bm2|bm15 [STACK TEACHER OUT]
# (resumable: run it again). The earlier stack: sh runs/i22/heads.sh bm2 runs/gpu/ft_keep5/model.pt
# runs/lenet_classical/model.pt runs/i22/head_bm2
set -e
case "${1:-}" in
    bm2) form=bm4 ;;   # the 4-branch neuron on inputs >= 0 is the 2-branch max
    bm15) form=bm15 ;;
    *) echo "usage: sh runs/i22/heads.sh bm2|bm15 [STACK TEACHER OUT]" >&2; exit 2 ;;
esac
STACK=${2:-runs/i22/ftlong/a/model.pt}
TEACHER=${3:-runs/recipe_long/teacher/model.pt}
OUT=${4:-runs/i22/ftlong_head_$1}
PY=${PY:-.venv/bin/python}
D=${BM_DATA_DIR:-../shared/data/mnist}
$PY -m model.train --method finetune --init $STACK \
    --teacher $TEACHER --form bm15 --op max --dx 0 --last-form $form \
    --train-layers 5 --last-op lse --last-alpha-end 64 --epochs 5 --last-max-epochs 2 \
    --lr 1e-3 --beta 0 --kd-temp 4 --threads 1 --data-dir $D --out $OUT/ft --no-progress
$PY -m model.quantize --checkpoint $OUT/ft/model.pt --out $OUT/lenet_$1.npz --arith bm \
    --preset bm8f6 --test --no-qat --data-dir $D > $OUT/quant.log 2>&1
tail -2 $OUT/quant.log
