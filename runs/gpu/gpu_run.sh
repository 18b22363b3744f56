#!/bin/sh
# The GPU recipe behind the published training figures (run from the repository root on a CUDA
# machine; a plain CPU machine runs the same commands with --device cpu, only slower).
#
#   runs/gpu/gpu_run.sh probe    one short epoch of each stage, to size the schedules
#   runs/gpu/gpu_run.sh tables   Table 2 and Table 1 (paper schedule), several cells at once
#   runs/gpu/gpu_run.sh finetune INIT TEACHER   end-to-end KD fine-tunes of a layer-wise KD snapshot:
#                             all six layers BM (two learning rates), and the classifier kept
#                             classical
#   runs/gpu/gpu_run.sh rest INIT TEACHER   one call: the Table 1 and 2 cells not finished yet
#                             (resumed from their checkpoints) beside three longer all-BM
#                             fine-tunes of INIT (1.5-BM classifier with a slower anneal, a
#                             4-branch classifier at two learning rates); under MPS when it starts
#   runs/gpu/gpu_run.sh table3   CIFAR-10 ResNet-22 Table 3 (schedule "gpu": the teacher with a
#                             150 s budget, then the nine cells 8 at a time with 420 s each,
#                             bfloat16 autocast; about 10 minutes on one H100)
#
# MNIST is read from $BM_DATA_DIR (a folder holding mnist/, and cifar10/ for table3). Results land in runs/ and, with
# $OUT set, a tarball of them (without the resumable checkpoints) in $OUT.
set -u
export PYTHONUNBUFFERED=1
export BM_DATA_DIR="${BM_DATA_DIR:-.devdata}"
DEV="${DEVICE:-cuda}"
BUDGET="${BUDGET:-480}"          # seconds for the training jobs; they resume if rerun
JOBS2="${JOBS2:-5}"
JOBS1="${JOBS1:-12}"  # under MPS (this session: 19 processes on one H100 at once)
PY="${PYTHON:-python3}"

# many small processes share the GPU far better under MPS than time-sliced; keep it only if a
# CUDA client works through it
mps() {
    if nvidia-cuda-mps-control -d 2>/dev/null; then
        if "$PY" -c 'import torch; torch.ones(1, device="cuda").sum().item()' 2>/dev/null; then
            echo "MPS: on"
        else
            echo quit | nvidia-cuda-mps-control; echo "MPS: off (client failed)"
        fi
    else
        echo "MPS: off (no daemon, or one already running)"
    fi
}

# the model.train processes a timed-out or killed driver left running ([m]: the pattern must
# not match a shell whose own command line names the module)
stop_cells() {
    pkill -f "[m]odel.train --out" 2>/dev/null; sleep 2
}

pack() {
    [ -n "${OUT:-}" ] || return 0
    tar czf "$OUT/runs_$1.tar.gz" --exclude='ckpt.pt' --exclude='*.tmp' runs/ 2>/dev/null
    # the checkpoints of unfinished cells come back too (commit them: runs/ is git-ignored)
    [ "${KEEP_CKPT:-1}" = 1 ] && tar czf "$OUT/ckpt_$1.tar.gz" $(find runs -name ckpt.pt)
    ls -la "$OUT"
}

case "${1:-}" in
probe)
    nvidia-smi -L 2>/dev/null
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
    t0=$(date +%s)
    "$PY" -m model.train --method classical --out runs/probe_cls --epochs 1 \
        --device "$DEV" --no-progress
    t1=$(date +%s)
    "$PY" -m model.train --method lwkd --out runs/probe_lwkd --teacher runs/probe_cls/model.pt \
        --train-limit 6000 --test-limit 2000 --layer-epochs 1 --last-op lse --last-joint 1 \
        --last-max-epochs 1 --final-epochs 1 --device "$DEV" --no-progress
    t2=$(date +%s)
    echo "probe: classical epoch $((t1 - t0)) s, lwkd at 1/10 data $((t2 - t1)) s"
    ;;
tables)
    mps
    timeout "$BUDGET" "$PY" -m model.experiments table2 --device "$DEV" --jobs "$JOBS2" \
        --threads 1 > runs_table2.log 2>&1 &
    p2=$!
    sleep 60  # table 2's teacher first: it is table 1's too
    # Table 1 keeps its own teacher once it has one (runs/table1/classical/model.pt, in git)
    if [ ! -f runs/table1/classical/model.pt ] && [ -f runs/table2/classical/model.pt ]; then
        mkdir -p runs/table1/classical && cp runs/table2/classical/* runs/table1/classical/
    fi
    timeout "$((BUDGET - 60))" "$PY" -m model.experiments table1 --device "$DEV" \
        --jobs "$JOBS1" --threads 1 > runs_table1.log 2>&1 &
    p1=$!
    wait $p2 $p1
    stop_cells
    cat runs_table2.log runs_table1.log
    mkdir -p runs/logs && cp runs_table*.log runs/logs/
    pack tables
    ;;
finetune)
    init=$2 teacher=$3
    common="--method finetune --init $init --teacher $teacher --beta 0 --device $DEV --no-progress"
    timeout "$BUDGET" "$PY" -m model.train $common --out runs/ft_allbm --epochs 12 \
        --last-op lse --last-max-epochs 3 --lr 5e-4 > runs_ft_allbm.log 2>&1 &
    timeout "$BUDGET" "$PY" -m model.train $common --out runs/ft_allbm_lr1e3 --epochs 12 \
        --last-op lse --last-max-epochs 3 --lr 1e-3 > runs_ft_allbm_lr1e3.log 2>&1 &
    timeout "$BUDGET" "$PY" -m model.train $common --out runs/ft_keep5 --epochs 10 --keep 5 \
        --lr 5e-4 > runs_ft_keep5.log 2>&1 &
    wait
    mkdir -p runs/logs && cp runs_ft_*.log runs/logs/
    grep -h "epoch\|done\|finetune from\|hard max" runs_ft_*.log
    pack finetune
    ;;
rest)
    init=$2 teacher=$3
    nvidia-smi -L 2>/dev/null
    mps
    t0=$(date +%s)
    timeout "$BUDGET" "$PY" -m model.experiments table2 --device "$DEV" --jobs 3 \
        --threads 1 > runs_table2.log 2>&1 &
    timeout "$BUDGET" "$PY" -m model.experiments table1 --device "$DEV" --jobs 10 \
        --threads 1 > runs_table1.log 2>&1 &
    common="--method finetune --init $init --teacher $teacher --beta 0 --device $DEV --no-progress"
    timeout "$BUDGET" "$PY" -m model.train $common --out runs/gpu/ft_allbm_long --epochs 16 \
        --last-op lse --last-max-epochs 4 --lr 5e-4 > runs_ft_allbm_long.log 2>&1 &
    timeout "$BUDGET" "$PY" -m model.train $common --out runs/gpu/ft_allbm_bm4_lr1e3 --epochs 14 \
        --last-form bm4 --last-op lse --last-max-epochs 4 --lr 1e-3 > runs_ft_allbm_bm4_lr1e3.log 2>&1 &
    timeout "$BUDGET" "$PY" -m model.train $common --out runs/gpu/ft_allbm_bm4 --epochs 14 \
        --last-form bm4 --last-op lse --last-max-epochs 4 --lr 5e-4 > runs_ft_allbm_bm4.log 2>&1 &
    wait
    stop_cells
    echo "rest: $(( $(date +%s) - t0 )) s"
    mkdir -p runs/logs && cp runs_table*.log runs_ft_*.log runs/logs/
    grep -h "epoch\|done\|finetune from\|hard max" runs_ft_*.log
    grep -h "done\|rc=" runs_table*.log | tail -30
    if [ -n "${OUT:-}" ]; then
        tar czf "$OUT/t1.tar.gz" runs/table1 && tar czf "$OUT/t2.tar.gz" runs/table2
        tar czf "$OUT/ft.tar.gz" runs/gpu/ft_allbm_long runs/gpu/ft_allbm_bm4 runs/gpu/ft_allbm_bm4_lr1e3 runs/logs
        ls -la "$OUT"
    fi
    ;;
table3)
    nvidia-smi -L 2>/dev/null
    "$PY" -m model.experiments table3 --device "$DEV" --jobs "${JOBS3:-8}" \
        --data-dir "$BM_DATA_DIR" > runs_table3.log 2>&1
    rc=$?
    cat runs_table3.log
    mkdir -p runs/logs && cp runs_table3.log runs/logs/
    [ -n "${OUT:-}" ] && cp -r results "$OUT/" 2>/dev/null
    KEEP_CKPT=0 pack table3
    exit $rc
    ;;
*)
    echo "usage: $0 probe|tables|finetune INIT TEACHER|rest INIT TEACHER|table3" >&2
    exit 2
    ;;
esac
