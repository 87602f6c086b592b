#!/usr/bin/env bash
# One-shot GPU check of minievo: every GPU figure the project needs, in one command of at most
# 8 minutes, for the few minutes a GPU is lent. Run from anywhere; it works in the repository
# root:
#
#     bash benchmarks/gpu_check.sh [--dry-run] [--list-steps] [--mnist DIR] [--budget SECONDS]
#                                  [--limit STEP=SECONDS ...]
#
# Steps, in this order, each under its own time limit (seconds). The limits are the plan: the
# script adds them up before it starts (the foreground steps one after another, the CPU lane
# beside the checks, plus 10 s for the reports), prints the total, and refuses to start (exit
# 2, one line) when the total exceeds the budget (default 460 s). --list-steps prints the plan
# and the total and exits. A step also never runs past what is left of the budget.
#
#   setup (foreground)
#     env             nvidia-smi (the GPU, its driver and CUDA version)                       5
#     install         nothing when `import cupy` works (a preinstalled cupy-cuda13x stays the
#                     only CuPy); pytest/hypothesis alone when only they are missing; without
#                     CuPy, cupy-cuda13x or cupy-cuda12x after the driver's CUDA version       15
#     doctor          minievo doctor (versions, CUDA, PTX compile of every kernel)             15
#     data            MNIST: a folder given with --mnist (or found, see below) is used as it
#                     is, never fetched; else a fetch only when a download host answers
#                     within 4 s; else the synthetic-digits set, flagged in summary.md         15
#     selfcheck       the committed generation 12/13 networks load and compact (CPU)           10
#   timing (foreground, alone: nothing else runs on the machine)
#     bench           RawKernel vs dense CuPy (cuBLAS) vs cupyx.scipy.sparse: committed
#                     generations 12/13, LeNet-5 density sweep, 1x1 conv with 300 live
#                     maps, at batch 1, 64, 1000, 10000; MAC ratio beside each time ratio      85
#     resnet_cupy     one ResNet-20 training step (forward, backward, SGD), batch 128, after
#                     warm-up: images/s; skipped when minievo.models has no resnet20           40
#     resnet_compact  compact forward of the evolved ResNet-8 (or a random 10% mask) vs dense
#                     forward; skipped (with the reason) when there is no resnet8 or
#                     minievo.sparse.compact refuses it (TypeError)                           20
#     train_cupy      one epoch of LeNet-5 with --backend cupy                                 35
#     evolve_cupy     minievo evolve --quick --backend cupy (compared with evolve_numpy)       55
#   checks (foreground; the CPU lane runs beside them: these steps time nothing)
#     tests_gpu       pytest -m gpu (the CuPy half of the suite): pass/fail counts             70
#     sanitizer_probe compute-sanitizer once on a tiny RawKernel launch: when it refuses the
#                     device ("Device not supported") or fails, the three steps below are
#                     skipped with that reason instead of failing one after another           10
#     memcheck        the RawKernel tests (tests/test_kernels_emulated.py -m gpu, not the     30
#     racecheck       batch-10000 ones) under compute-sanitizer --tool NAME, with CuPy's      20
#     synccheck       memory pools off (cupy.cuda.set_allocator(None)): a read past an array  20
#                     is seen, not hidden inside a pooled block
#   CPU lane (background, one after another, 6 threads, from the start of tests_gpu)
#     train_numpy     one epoch of LeNet-5 on the CPU                                          45
#     evolve_numpy    minievo evolve --quick on the CPU                                        60
#
# Foreground 445 s; the CPU lane (105 s) ends inside the 150 s of the checks; 10 s for the
# reports: 455 s of the 460 s budget. --limit STEP=SECONDS changes one limit (repeatable);
# --budget the whole. The limits are estimates for one H100/H200 (no run has timed them yet):
# a step that runs out of time is recorded as TIMEOUT with what it had done (bench.csv and the
# summary keep every case finished, the test counts say "before the run was stopped").
#
# Results: summary.md (rewritten after every step, so a run stopped from outside still leaves
# the figures so far), steps.tsv, bench.csv, logs/, sections/ and the runs (their .npz models
# deleted unless GPU_CHECK_KEEP_MODELS=1), in benchmarks/results/gpu/<UTC date and time>/; or,
# when $OUT is set (the device tool), summary.md, steps.tsv and bench.csv copied into $OUT after
# every step, and bundle.tar.gz (all the rest) at the end: unpack the bundle into
# benchmarks/results/gpu/<date>/ to commit it.
#
# Without a GPU (no nvidia-smi, or it lists none), or with --dry-run, every GPU step and the CPU
# lane are skipped with one line each saying so, doctor and selfcheck run, and the script exits
# 0 (CI runs it so). With a GPU it exits 1 when a step failed or timed out.
#
# MNIST (the device machine reaches no network): --mnist DIR must hold the four IDX files
# (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-...; else exit 2 at once);
# without it the first such folder among $MINIEVO_MNIST_DIR, $MINIEVO_DATA/mnist,
# ~/.cache/minievo/mnist, ./.mnist, ./shared/mnist and ./data/mnist. To bring MNIST along: copy
# ~/.cache/minievo/mnist/*.gz into ./.mnist/ (add /.mnist/ to .git/info/exclude and carry it:
# 11 MB). Through the device tool:
#     run(command="bash benchmarks/gpu_check.sh --mnist .mnist", carry=[".mnist"], timeout_s=480)
set -u
set -o pipefail

CALLER_DIR="$PWD"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
PY="${PYTHON:-python3}"
DRY=0
LIST=0
WHY=""
MNIST_ARG=""
BUDGET="${GPU_CHECK_BUDGET:-460}"
OVERRIDES=()

# ----- the plan: every step's limit, and which lane it runs in ------------------------------
declare -a STEP_NAMES=()
declare -A LIMIT=() LANE=()
plan() {  # name, limit in seconds, lane (fg: in order in the foreground; bg: the CPU lane)
    STEP_NAMES+=("$1")
    LIMIT[$1]=$2
    LANE[$1]=$3
}
plan env 5 fg
plan install 15 fg
plan doctor 15 fg
plan data 15 fg
plan selfcheck 10 fg
plan bench 85 fg
plan resnet_cupy 40 fg
plan resnet_compact 20 fg
plan train_cupy 35 fg
plan evolve_cupy 55 fg
plan tests_gpu 70 fg
plan sanitizer_probe 10 fg
plan memcheck 30 fg
plan racecheck 20 fg
plan synccheck 20 fg
plan train_numpy 45 bg
plan evolve_numpy 60 bg
BG_FROM=tests_gpu  # the CPU lane starts with this foreground step, and runs beside the rest
RESERVE=10         # seconds kept for the reports, the summary rewrites and the bundle

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --list-steps) LIST=1 ;;
        --mnist) MNIST_ARG="${2:-}"; shift ;;
        --budget) BUDGET="${2:-}"; shift ;;
        --limit) OVERRIDES+=("${2:-}"); shift ;;
        -h|--help) sed -n '2,72p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

case "$BUDGET" in
    ''|*[!0-9]*) echo "gpu_check: --budget must be a number of seconds, got '$BUDGET'" >&2; exit 2 ;;
esac
for o in "${OVERRIDES[@]}"; do
    name="${o%%=*}"
    value="${o#*=}"
    if [ -z "$name" ] || [ "$name" = "$o" ] || [ -z "${LIMIT[$name]+set}" ]; then
        echo "gpu_check: --limit takes STEP=SECONDS with STEP one of ${STEP_NAMES[*]}, got '$o'" >&2
        exit 2
    fi
    case "$value" in
        ''|*[!0-9]*|0) echo "gpu_check: --limit $name needs a whole number of seconds >= 1, got '$value'" >&2; exit 2 ;;
    esac
    LIMIT[$name]=$value
done

MNIST_FILES=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte
             t10k-labels-idx1-ubyte)
has_mnist() {  # folder: all four IDX files, plain or .gz
    local f
    [ -n "$1" ] && [ -d "$1" ] || return 1
    for f in "${MNIST_FILES[@]}"; do
        [ -e "$1/$f.gz" ] || [ -e "$1/$f" ] || return 1
    done
    return 0
}
case "$MNIST_ARG" in
    ''|/*) ;;
    *) MNIST_ARG="$CALLER_DIR/$MNIST_ARG" ;;  # relative to where the script was called from
esac
if [ -n "$MNIST_ARG" ] && ! has_mnist "$MNIST_ARG"; then
    echo "gpu_check: --mnist $MNIST_ARG does not hold the four MNIST IDX files (${MNIST_FILES[*]}, plain or .gz)" >&2
    exit 2
fi

# ----- the sum of the limits against the budget (before anything runs) -----------------------
FG_SUM=0
FG_BESIDE=0
BG_SUM=0
beside=0
for s in "${STEP_NAMES[@]}"; do
    if [ "${LANE[$s]}" = bg ]; then
        BG_SUM=$((BG_SUM + LIMIT[$s]))
    else
        [ "$s" = "$BG_FROM" ] && beside=1
        FG_SUM=$((FG_SUM + LIMIT[$s]))
        [ $beside -eq 1 ] && FG_BESIDE=$((FG_BESIDE + LIMIT[$s]))
    fi
done
BG_EXTRA=$((BG_SUM > FG_BESIDE ? BG_SUM - FG_BESIDE : 0))
NEED=$((FG_SUM + BG_EXTRA + RESERVE))
PLAN_LINE="step limits: foreground ${FG_SUM}s + CPU lane beyond the ${FG_BESIDE}s of foreground beside it ${BG_EXTRA}s (lane ${BG_SUM}s) + reports ${RESERVE}s = ${NEED}s of the ${BUDGET}s budget"
if [ $LIST -eq 1 ]; then
    printf '# step\tlimit_s\tlane\n'
    for s in "${STEP_NAMES[@]}"; do
        if [ "${LANE[$s]}" = bg ]; then lane="cpu-lane"; else lane="foreground"; fi
        printf '%s\t%s\t%s\n' "$s" "${LIMIT[$s]}" "$lane"
    done
    printf '# cpu lane starts with\t%s\n' "$BG_FROM"
    printf '# reserve_s\t%s\n' "$RESERVE"
    printf '# total_s\t%s\n' "$NEED"
    printf '# budget_s\t%s\n' "$BUDGET"
fi
if [ "$NEED" -gt "$BUDGET" ]; then
    echo "gpu_check: the $PLAN_LINE: over it; raise --budget or lower a --limit" >&2
    exit 2
fi
[ $LIST -eq 1 ] && exit 0

# ----- results folder -------------------------------------------------------------------------
STAMP="$(date -u +%Y-%m-%dT%H%MZ)"
if [ -n "${OUT:-}" ]; then
    # $OUT (the device tool's folder) brings back 8 files at most: work elsewhere, copy
    # summary.md, steps.tsv and bench.csv there after every step, and bundle.tar.gz (everything
    # else) at the end.
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

publish() {  # the files the device tool brings back, copied into $OUT (a rename: never half)
    local f
    [ "$RESULTS" = "$FINAL" ] && return 0
    for f in summary.md steps.tsv bench.csv; do
        if [ -f "$RESULTS/$f" ]; then
            cp "$RESULTS/$f" "$FINAL/.$f.$BASHPID" && mv -f "$FINAL/.$f.$BASHPID" "$FINAL/$f"
        fi
    done
}

update_summary() {  # summary.md from the steps so far (a plain one if the Python report fails)
    if ! "$PY" benchmarks/gpu_check.py summary --out "$RESULTS" >>"$LOGS/summary.log" 2>&1; then
        {
            cat "$RESULTS/header.md" 2>/dev/null
            echo
            echo "## Steps (the Python summary failed: logs/summary.log)"
            echo
            cat "$STEPS"
            cat "$RESULTS"/sections/*.md 2>/dev/null
        } >"$RESULTS/summary.md.tmp" && mv -f "$RESULTS/summary.md.tmp" "$RESULTS/summary.md"
    fi
    publish
}

record() {  # name, status, seconds, limit
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "logs/$1.log" >>"$STEPS"
}

skip_step() {  # name, reason
    record "$1" "skipped: $2" 0 "${LIMIT[$1]:--}"
    say "skip $1: $2"
    update_summary
}

run_step() {  # name, command...: under the plan's limit (less if the budget is nearly spent)
    local name="$1" limit budget_left status rc t0 dt grace reason
    shift
    limit="${LIMIT[$name]:-}"
    if [ -z "$limit" ]; then
        echo "gpu_check: internal error: step $name has no limit in the plan" >&2
        exit 2
    fi
    budget_left=$(($(left) - RESERVE))
    if [ "$budget_left" -lt 5 ]; then
        skip_step "$name" "out of time (budget ${BUDGET}s spent)"
        return 0
    fi
    [ "$limit" -gt "$budget_left" ] && limit=$budget_left
    grace=$((limit > 6 ? 3 : (limit > 1 ? 1 : 0)))
    say "run $name (limit ${limit}s): $*"
    t0=$(date +%s)
    # TERM at limit - grace, KILL at the limit: the step never outlasts its limit.
    timeout -k "$grace" "$((limit - grace))" "$@" >"$LOGS/$name.log" 2>&1 </dev/null
    rc=$?
    dt=$(($(date +%s) - t0))
    reason="$(tail -n 1 "$LOGS/$name.log" 2>/dev/null)"
    case $rc in
        0) status="ok" ;;
        3) if [ "${reason#skipped: }" != "$reason" ]; then status="$reason"; else status="FAILED (exit 3)"; fi ;;
        124|137) status="TIMEOUT (limit ${limit}s)" ;;
        *) status="FAILED (exit $rc)" ;;
    esac
    record "$name" "$status" "$dt" "$limit"
    say "$name: $status (${dt}s)"
    update_summary
    case "$status" in
        ok) return 0 ;;
        skipped:*) return 3 ;;
    esac
    FAILED=$((FAILED + 1))
    return $rc
}

write_header() {
    {
        echo "# minievo GPU check, $STAMP"
        echo
        echo "- GPU: ${GPU_NAME:-none ($WHY)}"
        if command -v git >/dev/null 2>&1 && git -C "$ROOT" rev-parse HEAD >/dev/null 2>&1; then
            echo "- commit: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD || echo ' (with uncommitted changes)')"
        else
            echo "- commit: unknown (no git repository here)"
        fi
        echo "- python: $PY_VERSION; CuPy: $CUPY_NOTE"
        echo "- host: $(uname -srm), $(nproc 2>/dev/null || echo '?') CPUs"
        echo "- data: $DATA_NOTE"
        echo "- budget: ${BUDGET}s; $PLAN_LINE"
        echo "- order: the timed GPU steps (bench, resnet_cupy, resnet_compact, train_cupy, evolve_cupy) ran alone; the CPU lane (train_numpy, evolve_numpy, 6 threads) ran beside tests_gpu and the compute-sanitizer steps, which time nothing"
    } >"$RESULTS/header.md"
}

PY_VERSION="$("$PY" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || echo unknown)"
CUPY_NOTE="not checked (dry run)"
DATA_NOTE="not decided yet"
GPU_NAME=""
CUDA_MAJOR=""
say "$PLAN_LINE"

# ----- is there a GPU? ------------------------------------------------------------------------
if [ $DRY -eq 0 ]; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        run_step env bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader && nvidia-smi'
        GPU_NAME="$(head -n 1 "$LOGS/env.log" 2>/dev/null | grep -v -i 'fail\|error\|not found\|no devices' || true)"
        CUDA_MAJOR="$(sed -n 's/.*CUDA Version: *\([0-9][0-9]*\).*/\1/p' "$LOGS/env.log" 2>/dev/null | head -n 1)"
    fi
    if [ -z "$GPU_NAME" ]; then
        DRY=1
        WHY="no GPU (nvidia-smi is missing or lists no device)"
    fi
else
    WHY="dry run (--dry-run)"
fi
if [ $DRY -eq 1 ]; then
    say "DRY RUN: $WHY; every GPU step is skipped"
    grep -q "^env	" "$STEPS" || skip_step env "$WHY"
fi
write_header
update_summary

# ----- install: never a second CuPy beside the one there ----------------------------------------
cupy_dists() {  # the installed CuPy distributions, e.g. "cupy-cuda13x 13.6.0"
    "$PY" -c 'import importlib.metadata as m; print(", ".join(sorted({d.metadata["Name"] + " " + d.version for d in m.distributions() if (d.metadata["Name"] or "").lower().startswith("cupy")})) or "none")' 2>/dev/null
}
if [ $DRY -eq 0 ]; then
    missing=()
    for mod in numpy scipy pytest hypothesis; do
        "$PY" -c "import $mod" >/dev/null 2>&1 || missing+=("$mod")
    done
    if "$PY" -c "import cupy" >/dev/null 2>&1; then
        gpu_pkg=""  # a working CuPy (cupy-cuda12x or cupy-cuda13x): nothing GPU-related is installed
    elif [ "${CUDA_MAJOR:-0}" -ge 13 ]; then
        gpu_pkg="cupy-cuda13x>=13"
    else
        gpu_pkg="cupy-cuda12x>=13"
    fi
    if [ -z "$gpu_pkg" ] && [ ${#missing[@]} -eq 0 ]; then
        skip_step install "CuPy ($(cupy_dists)), NumPy, SciPy, pytest and hypothesis are installed: nothing to install"
    else
        run_step install "$PY" -m pip install -q --retries 0 --timeout 5 ${gpu_pkg:+"$gpu_pkg"} "${missing[@]}"
    fi
    CUPY_NOTE="$("$PY" -c 'import cupy; print(cupy.__version__)' 2>/dev/null || echo 'not importable') ($(cupy_dists))"
    if ! "$PY" -c "import sys; from minievo import backend; sys.exit(0 if backend.cupy_available() else 1)" \
            >"$LOGS/cupy_check.log" 2>&1; then
        "$PY" -c "from minievo import backend; backend.xp_for('cupy')" >>"$LOGS/cupy_check.log" 2>&1
        DRY=1
        WHY="CuPy is not usable although nvidia-smi sees a GPU (logs/cupy_check.log)"
        FAILED=$((FAILED + 1))
        say "$WHY"
    fi
    write_header
else
    skip_step install "$WHY"
fi

run_step doctor "$PY" -m minievo.cli doctor

# ----- data -----------------------------------------------------------------------------------
find_mnist() {
    local d
    for d in "$MNIST_ARG" "${MINIEVO_MNIST_DIR:-}" "${MINIEVO_DATA:+$MINIEVO_DATA/mnist}" \
             "${XDG_CACHE_HOME:-$HOME/.cache}/minievo/mnist" "$ROOT/.mnist" "$ROOT/shared/mnist" \
             "$ROOT/data/mnist"; do
        if has_mnist "$d"; then
            echo "$d"
            return 0
        fi
    done
    return 1
}
DATA_ARGS=(--dataset mnist)
SYNTHETIC_NOTE="the train and evolve figures are on the generated synthetic-digits set, NOT on MNIST"
if [ -n "$MNIST_ARG" ]; then
    MNIST_DIR="$MNIST_ARG"
    DATA_ARGS+=(--data-dir "$MNIST_DIR")
    DATA_NOTE="MNIST from $MNIST_DIR (--mnist)"
    skip_step data "MNIST given with --mnist $MNIST_DIR: used as it is, no fetch"
elif MNIST_DIR="$(find_mnist)"; then
    DATA_ARGS+=(--data-dir "$MNIST_DIR")
    DATA_NOTE="MNIST from $MNIST_DIR"
    skip_step data "MNIST found in $MNIST_DIR"
elif [ $DRY -eq 1 ]; then
    DATA_NOTE="none needed ($WHY)"
    skip_step data "$WHY"
else
    run_step data "$PY" benchmarks/gpu_check.py fetch-mnist
    if MNIST_DIR="$(find_mnist)"; then
        DATA_ARGS+=(--data-dir "$MNIST_DIR")
        DATA_NOTE="MNIST fetched into $MNIST_DIR"
    else
        DATA_ARGS=(--dataset synthetic-digits)
        DATA_NOTE="NO MNIST ($(grep '^data	' "$STEPS" | cut -f2)): $SYNTHETIC_NOTE"
    fi
fi
write_header
update_summary

run_step selfcheck "$PY" benchmarks/gpu_check.py selfcheck --out "$RESULTS"

# ----- timing: the GPU figures, alone on the machine --------------------------------------------
TIMED=(bench resnet_cupy resnet_compact train_cupy evolve_cupy)
if [ $DRY -eq 1 ]; then
    for s in "${TIMED[@]}"; do skip_step "$s" "$WHY"; done
else
    run_step bench "$PY" benchmarks/gpu_check.py bench --out "$RESULTS"
    run_step resnet_cupy "$PY" benchmarks/gpu_check.py resnet-train --out "$RESULTS"
    run_step resnet_compact "$PY" benchmarks/gpu_check.py resnet-compact --out "$RESULTS"
    run_step train_cupy "$PY" -m minievo.cli train --model lenet5 --epochs 1 \
        --backend cupy --no-progress --out "$RESULTS/train_cupy" "${DATA_ARGS[@]}"
    run_step evolve_cupy "$PY" -m minievo.cli evolve --quick --backend cupy --no-progress \
        --out "$RESULTS/evolve_cupy" "${DATA_ARGS[@]}"
fi

# ----- checks, with the CPU lane beside them ----------------------------------------------------
SANITIZED=(memcheck racecheck synccheck)
if [ $DRY -eq 1 ]; then
    for s in train_numpy evolve_numpy tests_gpu sanitizer_probe "${SANITIZED[@]}"; do
        skip_step "$s" "$WHY"
    done
else
    (   # the CPU lane: its own count of failed steps is its exit status
        FAILED=0
        CPU_ENV=(env OPENBLAS_NUM_THREADS=6 OMP_NUM_THREADS=6 MINIEVO_SPARSE_THREADS=6)
        run_step train_numpy "${CPU_ENV[@]}" "$PY" -m minievo.cli train --model lenet5 \
            --epochs 1 --backend numpy --no-progress --out "$RESULTS/train_numpy" "${DATA_ARGS[@]}"
        run_step evolve_numpy "${CPU_ENV[@]}" "$PY" -m minievo.cli evolve --quick \
            --backend numpy --no-progress --out "$RESULTS/evolve_numpy" "${DATA_ARGS[@]}"
        exit $FAILED
    ) &
    CPU_LANE=$!

    run_step tests_gpu "$PY" -m pytest -v -p no:cacheprovider -m gpu -rfE \
        --junitxml="$RESULTS/tests_gpu.xml"
    "$PY" benchmarks/gpu_check.py tests --out "$RESULTS" tests_gpu "$LOGS/tests_gpu.log" \
        "$RESULTS/tests_gpu.xml" >/dev/null 2>&1
    update_summary

    SANITIZER="$(command -v compute-sanitizer || true)"
    [ -z "$SANITIZER" ] && [ -x /usr/local/cuda/bin/compute-sanitizer ] && \
        SANITIZER=/usr/local/cuda/bin/compute-sanitizer
    if [ -z "$SANITIZER" ]; then
        for s in sanitizer_probe "${SANITIZED[@]}"; do skip_step "$s" "compute-sanitizer not found"; done
    else
        # Once, on 32 floats: a GPU it refuses costs one short run, not three failed ones.
        run_step sanitizer_probe "$PY" benchmarks/gpu_check.py sanitizer-probe "$SANITIZER"
        probe_status="$(grep '^sanitizer_probe	' "$STEPS" | tail -n 1 | cut -f2)"
        if [ "$probe_status" != ok ] || ! grep -q '^probe ok' "$LOGS/sanitizer_probe.log"; then
            case "$probe_status" in
                skipped:*) reason="${probe_status#skipped: }" ;;
                ok) reason="the probe printed no 'probe ok'" ;;
                *) reason="the probe failed: $probe_status" ;;
            esac
            for s in "${SANITIZED[@]}"; do
                skip_step "$s" "$reason (logs/sanitizer_probe.log)"
            done
        else
            for s in "${SANITIZED[@]}"; do
                run_step "$s" "$SANITIZER" --tool "$s" --error-exitcode 99 --print-limit 20 \
                    "$PY" benchmarks/gpu_check.py nopool-pytest -v -p no:cacheprovider -m gpu \
                    -k "not 10000" tests/test_kernels_emulated.py
                "$PY" benchmarks/gpu_check.py tests --out "$RESULTS" "$s" "$LOGS/$s.log" \
                    >/dev/null 2>&1
                update_summary
            done
        fi
    fi

    say "waiting for the CPU lane (train_numpy, evolve_numpy)"
    wait "$CPU_LANE"
    FAILED=$((FAILED + $?))
    "$PY" benchmarks/gpu_check.py train --out "$RESULTS" >"$LOGS/report_train.log" 2>&1
    "$PY" benchmarks/gpu_check.py evolve --out "$RESULTS" >"$LOGS/report_evolve.log" 2>&1
fi

# ----- the end: summary.md, the bundle ----------------------------------------------------------
update_summary
# The models are not kept (about 40 MB; their comparison is in summary.md) unless asked.
[ "${GPU_CHECK_KEEP_MODELS:-0}" = 1 ] || find "$RESULTS" -name '*.npz' -delete
if [ "$RESULTS" != "$FINAL" ]; then
    tar -czf "$FINAL/bundle.tar.gz" -C "$RESULTS" . 2>/dev/null
    publish
    rm -rf "$RESULTS"
fi
say "results in $FINAL ($(($(date +%s) - START))s)"
cat "$FINAL/summary.md"
if [ $DRY -eq 1 ] && [ "${WHY#CuPy is not usable}" = "$WHY" ]; then
    exit 0
fi
[ $FAILED -eq 0 ]
