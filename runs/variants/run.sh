#!/bin/sh
# Trained exports of the board-sized LeNet variants (hw/boards.py): the classical teacher, the
# all-BM student (layer-wise KD, then an end-to-end KD fine-tune with the hard max), and the
# two integer exports each. CPU, one thread per step; logs next to each run.
set -eu
PY="${PYTHON:-.venv/bin/python}"
for net in ${NETS:-lenet-w4n1 lenet-w4}; do
    d=runs/variants/$net
    c="--net $net --threads 1 --no-progress"
    [ -f $d/classical/result.json ] || $PY -m model.train --method classical $c \
        --out $d/classical --epochs 4 > $d.classical.log 2>&1
    [ -f $d/lwkd/result.json ] || $PY -m model.train --method lwkd $c --teacher $d/classical/model.pt \
        --out $d/lwkd --form bm15 --op max --dx 0 --layer-epochs 1,1,1,1,1,3 --last-joint 1 \
        --last-op lse > $d.lwkd.log 2>&1
    [ -f $d/ft/result.json ] || $PY -m model.train --method finetune $c --init $d/lwkd/after_layer4.pt \
        --teacher $d/classical/model.pt --out $d/ft --epochs 8 --last-op lse --last-max-epochs 3 \
        --lr 5e-4 --beta 0 > $d.ft.log 2>&1
    $PY -m model.quantize --checkpoint $d/ft/model.pt --out model/weights/${net}_bm15_max.npz \
        --arith bm --test --no-qat > $d.quant_bm.log 2>&1
    $PY -m model.quantize --checkpoint $d/classical/model.pt --out model/weights/${net}_mac8.npz \
        --arith mac --test > $d.quant_mac.log 2>&1
    tail -n 1 $d.quant_bm.log $d.quant_mac.log
done
