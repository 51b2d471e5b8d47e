#!/usr/bin/env bash
# The one GPU-machine call of issue 22 (tools/gpu/README.md): install the
# kit, check every import in seconds BEFORE the ~245 s mmcv build, build
# MMCV 2.1.0's CUDA ops, then in this order, each bounded by what is left of
# a hard deadline and packed into $OUT/results.tgz after every step:
#   tests      pytest -m cuda tests/test_cuda
#   bench      benchmark.py --device cuda, deformable-detr_r50_coco, fp32
#   bench_amp  the same with --amp bfloat16
#   demo       tools/demo/run_demo.py on the GPU with --amp (ET and full
#              fine-tuning), then tools/gpu/check_demo.py
# Adapted from ../shared/gpu/device_run.sh (../shared does not travel).
#
# On the device (from the project root, carry [".gpukit"]):
#   DEADLINE=540 bash tools/gpu/device_run.sh
# Here, before spending device time (local .venv, no kit, no build):
#   DRY_RUN=1 bash tools/gpu/device_run.sh
# Knobs (environment): DEADLINE (s, default 540), STEPS (default
# "build tests bench bench_amp demo", run in the order named; a warm
# machine that already built mmcv skips the build by itself), CAP_TESTS / CAP_BENCH / CAP_BENCH_AMP
# (s, upper bounds per step; the demo gets the rest), BENCH_ARCHS /
# BENCH_METHODS (what the benchmark measures), BENCH_NAME, BENCH_CONFIG_TIMEOUT,
# BENCH_WARMUP / BENCH_ITERS / BENCH_INFER_ITERS, DEMO_AMP, GPU_SCRATCH, BENCH.
set -u

# -- project paths: the one place to change when tools move ---------------
# the benchmark: its new home (tools/analysis_tools/petl_benchmark.py) if
# there, else the old path (tools/analysis/benchmark.py); BENCH= overrides
BENCH_CANDIDATES="tools/analysis_tools/petl_benchmark.py tools/analysis/benchmark.py"
if [ -z "${BENCH:-}" ]; then
  for b in $BENCH_CANDIDATES; do [ -e "$b" ] && { BENCH=$b; break; }; done
  BENCH=${BENCH:-tools/analysis_tools/petl_benchmark.py}
fi
DEMO=tools/demo/run_demo.py
CUDA_TESTS=tests/test_cuda
GPU_TOOLS=tools/gpu
KIT=.gpukit
METHOD_CONFIGS=configs/methods

# -- what is measured ------------------------------------------------------
BENCH_ARCHS=${BENCH_ARCHS:-deformable-detr_r50_coco}
BENCH_METHODS=${BENCH_METHODS:-full-ft heads-only etta etta+ckpt lora unipt}
BENCH_SHAPE="--batch 2 --input-size 800 1333"
BENCH_LOOPS="--warmup ${BENCH_WARMUP:-2} --iters ${BENCH_ITERS:-5} --infer-iters ${BENCH_INFER_ITERS:-5}"
BENCH_CONFIG_TIMEOUT=${BENCH_CONFIG_TIMEOUT:-90}
DEMO_AMP=${DEMO_AMP:-bfloat16}
DEMO_METHODS="et full"
CAP_TESTS=${CAP_TESTS:-150}
CAP_BENCH=${CAP_BENCH:-150}
CAP_BENCH_AMP=${CAP_BENCH_AMP:-120}
STEPS=${STEPS:-build tests bench bench_amp demo}

T0=$(date +%s); DEADLINE=${DEADLINE:-540}; DRY_RUN=${DRY_RUN:-0}
ROOT=$(pwd)
if [ "$DRY_RUN" = 1 ]; then
  S=${GPU_SCRATCH:-/tmp/gpu-dry}; PY=${PY:-$ROOT/.venv/bin/python}
  OUT=${OUT:-$S/out}
else
  S=${GPU_SCRATCH:-/tmp/gpu}; PY=${PY:-python3}
  OUT=${OUT:?the device tool sets OUT; for a local check use DRY_RUN=1}
fi
# results of this call only (a second call on a warm machine reuses $S's
# kit and build, not the first call's results)
R=$S/res.$T0; MMCV_SRC=$S/mmcv/mmcv-2.1.0
[ -e "$GPU_TOOLS/device_run.sh" ] || { echo "run me from the project root"; exit 2; }
mkdir -p "$S" "$R" "$OUT"
export PYTHONUNBUFFERED=1

left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
log() { echo "[gpu +$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
pack() { (cd "$R" && tar czf "$OUT/results.tgz" .) 2>/dev/null; }
trap pack EXIT
want() { case " $STEPS " in *" $1 "*) return 0;; esac; return 1; }
fail() { log "STOP: $1"; exit "$2"; }

# run NAME CAP CMD...: at most min(CAP, what is left - 10) seconds; the
# log goes to $R/NAME.log, the status to $R/steps.tsv, results are packed
run() {
  local name=$1 cap=$2; shift 2
  local l budget rc start
  l=$(left); budget=$(( l - 10 ))
  if [ "$budget" -lt 20 ]; then
    log "skip $name: $l s left"; printf '%s\tskipped\t0\t%s\n' "$name" \
      "$budget" >> "$R/steps.tsv"; return 0
  fi
  [ "$budget" -gt "$cap" ] && budget=$cap
  log "start $name (budget $budget s of $l s left): $*"
  start=$(date +%s)
  timeout -k 5 "$budget" "$@" > "$R/$name.log" 2>&1; rc=$?
  [ "$rc" = 124 ] && log "$name TIMED OUT after $budget s"
  log "end $name rc=$rc ($(( $(date +%s) - start )) s)"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - start ))" \
    "$budget" >> "$R/steps.tsv"
  tail -25 "$R/$name.log"; pack
}

BENCH_CMD=("$PY" "$BENCH" --device cuda --archs $BENCH_ARCHS
           --methods $BENCH_METHODS $BENCH_SHAPE $BENCH_LOOPS
           --timeout "$BENCH_CONFIG_TIMEOUT" --out-dir "$R/bench")
DEMO_CMD=("$PY" "$DEMO" --device cuda --amp "$DEMO_AMP"
          --methods $DEMO_METHODS --work-dir "$S/demo"
          --data-root "$S/demo_data")

# -- 0. the plan, and what can be checked without Python ------------------
{
  echo "deadline ${DEADLINE}s, steps: $STEPS, dry run: $DRY_RUN, python: $PY"
  echo "tests:     $PY -m pytest -m cuda $CUDA_TESTS (cap ${CAP_TESTS}s)"
  echo "bench:     ${BENCH_CMD[*]} --name ${BENCH_NAME:-speed_memory}_fp32 (cap ${CAP_BENCH}s)"
  echo "bench_amp: ${BENCH_CMD[*]} --amp bfloat16 --name ${BENCH_NAME:-speed_memory}_bf16 (cap ${CAP_BENCH_AMP}s)"
  echo "demo:      ${DEMO_CMD[*]} (the rest)"
} | tee "$R/plan.txt"
missing=()
for f in "$BENCH" "$DEMO" "$CUDA_TESTS/__init__.py" "$GPU_TOOLS/import_check.py" \
         "$GPU_TOOLS/check_demo.py"; do [ -e "$f" ] || missing+=("$f"); done
for a in $BENCH_ARCHS; do for m in $BENCH_METHODS; do
  f=$METHOD_CONFIGS/${m}_$a.py; [ -e "$f" ] || missing+=("$f")
done; done
for c in timeout tar "$PY"; do command -v "$c" >/dev/null || missing+=("command $c"); done
if [ "$DRY_RUN" != 1 ]; then
  for f in "$KIT/mmcv-2.1.0.tar.gz"; do [ -e "$f" ] || missing+=("$f (run bash ../shared/gpu/make_kit.sh here, carry .gpukit)"); done
  ls "$KIT"/*.whl >/dev/null 2>&1 || missing+=("$KIT/*.whl")
  want build && { command -v nvcc >/dev/null || missing+=("command nvcc"); }
fi
[ ${#missing[@]} = 0 ] || fail "missing: ${missing[*]}" 2
# the flags this script passes exist in the tools' sources (the tools
# themselves import MMCV's ops, which are not built yet)
for flag in --device --archs --methods --batch --input-size --warmup --iters \
            --infer-iters --timeout --out-dir --name --amp; do
  grep -q -- "'$flag'" "$BENCH" || fail "$BENCH has no $flag" 2
done
for flag in --device --amp --methods --work-dir --data-root; do
  grep -q -- "'$flag'" "$DEMO" || fail "$DEMO has no $flag" 2
done
"$PY" -m py_compile "$BENCH" "$DEMO" "$CUDA_TESTS"/*.py "$GPU_TOOLS"/*.py \
  || fail "a script does not compile" 2
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  nproc; "$PY" --version; } > "$R/env.txt" 2>&1

# -- 1. the kit and every import, in seconds --------------------------------
if [ "$DRY_RUN" = 1 ]; then
  export PYTHONPATH=$ROOT
else
  if [ ! -e "$S/site/.installed" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target "$S/site" "$KIT"/*.whl > "$R/kit.log" 2>&1 \
      || { tail -20 "$R/kit.log"; fail "kit install failed" 3; }
    touch "$S/site/.installed"
  fi
  [ -d "$MMCV_SRC" ] || { mkdir -p "$S/mmcv" && tar xzf "$KIT/mmcv-2.1.0.tar.gz" -C "$S/mmcv"; }
  export PYTHONPATH=$MMCV_SRC:$S/site:$ROOT
fi
CUDA_FLAG=--require-cuda; [ "$DRY_RUN" = 1 ] && CUDA_FLAG=
"$PY" "$GPU_TOOLS/import_check.py" $CUDA_FLAG --extra "$BENCH" 2>&1 | tee "$R/import_check.log"
[ "${PIPESTATUS[0]}" = 0 ] || fail "import check failed (see above)" 4
if grep -q '^demo-only modules missing' "$R/import_check.log" && want demo; then
  STEPS=$(echo " $STEPS " | sed 's/ demo / /'); log "demo step dropped: $(grep '^demo-only' "$R/import_check.log")"
fi
if [ "$DRY_RUN" = 1 ]; then
  # what the device cannot check before the build: the exact argv parses
  "$PY" - "$BENCH" "$DEMO" "${BENCH_CMD[@]:2}" -- "${DEMO_CMD[@]:2}" <<'PY' \
    || fail "a planned command line does not parse" 4
import importlib.util, sys
bench_path, demo_path, *rest = sys.argv[1:]
cut = rest.index('--')
def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod
bench = load(bench_path, 'gpu_bench')
for extra in ([], ['--amp', 'bfloat16']):
    args = bench.parse_args(rest[:cut] + extra)
    assert args.device == 'cuda' and args.input_size == [800, 1333], args
    print('bench argv ok:', bench.settings(args), bench.config_list(args)[1])
demo = load(demo_path, 'gpu_demo')
args = demo.parse_args(rest[cut + 1:])
print('demo argv ok:', vars(args))
PY
  "$PY" "$GPU_TOOLS/import_check.py" --after-build --device cpu \
    || fail "after-build import check (cpu) failed" 4
  "$PY" -m pytest -m cuda "$CUDA_TESTS" --collect-only -q -p no:cacheprovider \
    2>&1 | tail -3
  log "dry run done: plan in $R/plan.txt; nothing else runs in a dry run"
  exit 0
fi

# -- 2. mmcv 2.1.0 with CUDA ops (~245 s on 16 cores; C++20 for torch >= 2.10)
if want build && ! ls "$MMCV_SRC"/mmcv/_ext*.so >/dev/null 2>&1; then
  l=$(left); log "build mmcv ($l s left)"
  [ "$l" -gt 120 ] || fail "only $l s left for the ~245 s mmcv build" 5
  (cd "$MMCV_SRC" && sed -i "s/'-std=c++17'/'-std=c++20'/g" setup.py &&
   MMCV_WITH_OPS=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} \
   MAX_JOBS=$(nproc) timeout -k 5 $(( l - 20 )) "$PY" setup.py build_ext --inplace) \
    > "$R/build.log" 2>&1 || { tail -30 "$R/build.log"; fail "mmcv build failed" 5; }
  log "mmcv built"
fi
"$PY" "$GPU_TOOLS/import_check.py" --after-build 2>&1 | tee "$R/stack.log"
[ "${PIPESTATUS[0]}" = 0 ] || fail "mmcv.ops with CUDA / stack import failed" 6
pack

# -- 3. the measurements, each bounded by what is left ------------------------
# in the order STEPS names them (build is above)
for step in $STEPS; do
  case $step in
    tests) run tests "$CAP_TESTS" "$PY" -m pytest -m cuda "$CUDA_TESTS" -rs \
             -q -p no:cacheprovider --junitxml="$R/cuda_tests.xml" ;;
    bench) run bench "$CAP_BENCH" "${BENCH_CMD[@]}" \
             --name ${BENCH_NAME:-speed_memory}_fp32 ;;
    bench_amp) run bench_amp "$CAP_BENCH_AMP" "${BENCH_CMD[@]}" \
                 --amp bfloat16 --name ${BENCH_NAME:-speed_memory}_bf16 ;;
    demo)
      run demo "$DEADLINE" "${DEMO_CMD[@]}"
      "$PY" "$GPU_TOOLS/check_demo.py" "$S/demo" --keep "$R/demo" 2>&1 \
        | tee "$R/demo_check.log" ;;
  esac
done
log "done; results in \$OUT/results.tgz"
cat "$R/steps.tsv" 2>/dev/null
