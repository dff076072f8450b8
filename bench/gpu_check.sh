#!/usr/bin/env bash
# The GPU check of issue 11, in one run on one H100/H200 (about 6-8 minutes):
#   install  the carried wheels (bench/gpu_wheels/, `make gpu-wheels`) into a folder put
#            first on PYTHONPATH, then bench/gpu_env_check.py: fail fast, with the reason
#   tests    the CUDA tests (tests/cuda) and the injected-OOM engine tests
#   sampler  bench/sampler.py on ddpm-cifar10 (random weights) against diffusers'
#            DDPMPipeline/DDIMPipeline fp32 and fp16, up to the probed batch; eager, bf16,
#            compiled and CUDA graphs; img/s, TFLOP/s, fraction of the bf16 peak; a profile
#   service  bench/service.py with the gen worker on CUDA: 64 concurrent single-image jobs
#            against one 64-image job; then 1-step jobs from 256 clients for 15 s (the
#            control plane's jobs/s next to a GPU)
# Everything goes to $OUT (at most 8 files): gpu_check.log (all of it), env.txt, tests.txt,
# sampler.md, profile.txt, service.md, summary.md. Each stage has a time limit; a stage
# that fails or runs out of time does not stop the others.
#
#   bash bench/gpu_check.sh                 # on the GPU machine (see bench/RESULTS.md)
#   GPU_CHECK_DRY=1 bash bench/gpu_check.sh # the same plumbing on a CPU, shrunk: tiny
#                                           # models, few steps, CUDA tests skipped
# Settings (environment): OUT (default out/gpu_check), GPU_CHECK_PYTHON (python3),
# GPU_CHECK_WHEELS (bench/gpu_wheels), GPU_CHECK_SITE (/tmp/ddpm-gpu-site),
# GPU_CHECK_STAGES (tests,sampler,service: a rerun can name fewer).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
DRY=${GPU_CHECK_DRY:-0}
[ "${1:-}" = "--cpu-dry-run" ] && DRY=1
OUT=${OUT:-$REPO/out/gpu_check}
PY=${GPU_CHECK_PYTHON:-python3}
WHEELS=${GPU_CHECK_WHEELS:-$REPO/bench/gpu_wheels}
SITE=${GPU_CHECK_SITE:-/tmp/ddpm-gpu-site}
STAGES=${GPU_CHECK_STAGES:-tests,sampler,service}
WORK=$(mktemp -d /tmp/ddpm-gpu-check.XXXXXX)
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
TEE_PID=$!
# Let tee write the last lines before the script's exit ends the call.
trap 'rm -rf "$WORK"; exec 1>&- 2>&-; wait "$TEE_PID" 2>/dev/null' EXIT
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

T0=$SECONDS
FAILED=""
SUMMARY="$OUT/summary.md"
{
    echo "# GPU check $(date -u '+%Y-%m-%d %H:%M UTC') ($([ "$DRY" = 1 ] && echo 'CPU DRY RUN' || echo GPU))"
    if rev=$(git rev-parse --short HEAD 2>/dev/null); then
        echo "commit $rev$(git diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes')"
    fi
} >"$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
banner() { echo; echo "=== $* (t=$((SECONDS - T0)) s)"; }

# A stage: its own time limit, its output in a file of $OUT and in the log.
run_stage() {
    local name=$1 limit=$2 file=$3; shift 3
    local start=$SECONDS rc
    banner "$name (limit ${limit} s) -> $(basename "$file")"
    timeout -k 15 "$limit" "$@" 2>&1 | tee -a "$file"
    rc=${PIPESTATUS[0]}
    local took=$((SECONDS - start)) verdict=ok
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && verdict="TIMED OUT"
    [ "$rc" != 0 ] && [ "$verdict" = ok ] && verdict="FAILED (exit $rc)"
    note "- $name: $verdict in ${took} s"
    [ "$rc" = 0 ] || FAILED="$FAILED $name"
    return "$rc"
}

# --- install and check ------------------------------------------------------------------
banner "install"
if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    note "FATAL: no wheels in $WHEELS: run 'make gpu-wheels' on the CPU machine and carry the folder"
    exit 2
fi
rm -rf "$SITE"
start=$SECONDS
if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --disable-pip-version-check --target "$SITE" "$WHEELS"/*.whl; then
    note "FATAL: pip could not install the wheels of $WHEELS with $PY"
    exit 2
fi
note "- install: $(ls "$WHEELS"/*.whl | wc -l) wheels ($(du -sh "$WHEELS" | cut -f1)) in $((SECONDS - start)) s"
# Ours first, then the carried wheels, then the machine's own packages.
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"

{
    echo "# environment"
    date -u
    uname -a
    command -v nvidia-smi >/dev/null && nvidia-smi
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
    nproc
    free -g 2>/dev/null | head -2
} >"$OUT/env.txt" 2>&1
CHECK_ARGS=(--wheels "$WHEELS" --site "$SITE" --requirements bench/gpu_requirements.txt)
[ "$DRY" = 1 ] || CHECK_ARGS+=(--expect-cuda)
"$PY" bench/gpu_env_check.py "${CHECK_ARGS[@]}" 2>&1 | tee -a "$OUT/env.txt"
check=${PIPESTATUS[0]}
skip=$(sed -n 's/^skip=//p' "$OUT/env.txt" | tail -1)
if [ "$check" = 2 ]; then
    note "FATAL: the environment check failed (see env.txt): nothing can run"
    grep -E '^(FATAL|problem)' "$OUT/env.txt" | tee -a "$SUMMARY"
    exit 2
fi
note "- environment check: exit $check${skip:+, skipping $skip}"
grep -E '^(problem|warning)' "$OUT/env.txt" | sed 's/^/  /' | tee -a "$SUMMARY"
wanted() { [[ ",$STAGES," == *",$1,"* ]] && [[ ",$skip," != *",$1,"* ]]; }

if [ "$DRY" = 1 ]; then
    TESTS=(tests/cuda tests/service/test_engine_oom.py tests/service/test_engine_device.py
           tests/core/test_seeding.py)
    SAMPLER=(--device cpu --preset tiny --image-size 8 --batch 2,max --probe-limit 4 --steps 3
             --samplers ddpm --repeats 1 --warmup 1 --compile --compile-batches max
             --cuda-graphs --device-noise --deadline 150 --compile-reserve 60 --threads 2)
    INIT=(--preset tiny --image-size 16 --channels 1)
    SERVICE=(batching --device cpu --steps 5 --sampler ddpm --n 4 --repeat 1 --threads 1)
    CONTROL=(throughput --device cpu --steps 1 --n 16 --duration 5 --warmup 1 --wait prefer
             --no-fetch --threads 1)
    LIMITS=(300 240 180 60)
else
    # Engine tests first, then training and the CPU-injected OOM, then the compile tests
    # (the slowest: 3 compiles).
    TESTS=(tests/cuda/test_engine_cuda.py tests/cuda/test_train_cuda.py
           tests/service/test_engine_oom.py tests/service/test_engine_device.py
           tests/cuda/test_compile_cuda.py)
    # 20 steps: ratios and TFLOP/s do not depend on the step count (img/s@1000 is printed).
    SAMPLER=(--device cuda --preset ddpm-cifar10 --image-size 32 --steps 20
             --batch 64,256,max --probe-limit 1024 --samplers ddpm,ddim --repeats 2 --warmup 1
             --compile --compile-batches max --cuda-graphs --graphs-batches 64,max
             --device-noise --deadline 175 --compile-reserve 80 --profile "$OUT/profile.txt")
    INIT=(--preset ddpm-cifar10 --image-size 32 --channels 3)
    SERVICE=(batching --device cuda --steps 100 --sampler ddpm --n 64 --repeat 3 --threads 4)
    # The control plane next to a GPU: 1-step jobs, so the job's surroundings dominate.
    CONTROL=(throughput --device cuda --steps 1 --n 256 --duration 15 --wait prefer
             --no-fetch --threads 4)
    LIMITS=(150 220 110 60)
fi

if wanted tests; then
    run_stage tests "${LIMITS[0]}" "$OUT/tests.txt" \
        "$PY" -m pytest -v -s -p no:cacheprovider -o addopts="" -rsfE --timeout 300 "${TESTS[@]}"
    grep -E '(passed|failed|skipped|error).* in [0-9.]+s' "$OUT/tests.txt" | tail -1 | sed 's/^/  pytest: /' | tee -a "$SUMMARY"
    grep -E '^(FAILED|ERROR) ' "$OUT/tests.txt" | sed 's/^/  /' | tee -a "$SUMMARY"
fi

if wanted sampler; then
    run_stage sampler "${LIMITS[1]}" "$OUT/sampler.md" "$PY" bench/sampler.py "${SAMPLER[@]}"
    grep -E '^# (memory probe|ddpm-cifar10:|tiny:)' "$OUT/sampler.md" | sed 's/^# /  /' | tee -a "$SUMMARY"
    sed -n '/^| preset | sampler | contender | best img/,/^$/p' "$OUT/sampler.md" >>"$SUMMARY"
fi

if wanted service; then
    "$PY" -m app.cli init "$WORK/model" "${INIT[@]}" >/dev/null
    run_stage service "${LIMITS[2]}" "$OUT/service.md" \
        "$PY" bench/service.py --checkpoint "$WORK/model" "${SERVICE[@]}"
    grep -E '^(ratio|overhead)' "$OUT/service.md" | sed 's/^/  /' | tee -a "$SUMMARY"
    grep -E '^\|' "$OUT/service.md" >>"$SUMMARY"
    run_stage control "${LIMITS[3]}" "$OUT/service.md" \
        "$PY" bench/service.py --checkpoint "$WORK/model" "${CONTROL[@]}"
    grep -E '^\| (jobs/s|errors|job latency|server side|engine)' "$OUT/service.md" \
        | sed 's/^/  /' | tee -a "$SUMMARY"
fi

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,temperature.gpu --format=csv >>"$OUT/env.txt" 2>&1
note "- total: $((SECONDS - T0)) s${FAILED:+; failed or timed out:$FAILED}"
banner "summary ($OUT/summary.md)"
cat "$SUMMARY"
[ -z "$FAILED" ]
