#!/usr/bin/env bash
# benchmarks/grid.py for several (model, k) at once, on a machine with many cores: stage 1's
# candidates split by (architecture, learning rate) into one process each, merged per (model, k)
# with --merge (each row depends on its layer and the splits alone), then stage 2 per (model, k),
# each (model, k) as soon as its own parts are done.
# Every process trains, splices and probes on DEVICE with one CPU thread. LRS, ARCHITECTURES,
# STAGE1_TOKENS (1M), STAGE2_TOKENS (2M), PYTHON and WORK_DIR (benchmarks/layers) override.
#
#   benchmarks/grid_parallel.sh DEVICE RESULTS_DIR MODEL:K [MODEL:K ...]
#   e.g. benchmarks/grid_parallel.sh cuda benchmarks/results tiny-gelu:8 tiny-gated:16
#
# Writes RESULTS_DIR/grid_stage1_MODEL_kK.json (1M tokens) and RESULTS_DIR/grid_MODEL_kK.json
# (stage 2, 2M tokens); the parts and every process's log go under RESULTS_DIR/grid_parts/.
set -euo pipefail
device=$1
results=$2
shift 2
python=${PYTHON:-python}
work=${WORK_DIR:-benchmarks/layers}
read -r -a lrs <<<"${LRS:-1e-3 3e-3 1e-2}"
read -r -a architectures <<<"${ARCHITECTURES:-mxd topk_transcoder topk_skip_transcoder}"
stage1_tokens=${STAGE1_TOKENS:-1000000}
stage2_tokens=${STAGE2_TOKENS:-2000000}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
mkdir -p "$results/grid_parts"

run() { # log_file, then grid.py's arguments; a failed process prints its log's end
    local log=$1
    shift
    "$python" benchmarks/grid.py --threads 1 --device "$device" "$@" >"$log" 2>&1 ||
        { echo "failed: $*"; tail -n 30 "$log"; return 1; }
}

chain() { # model, k: stage 1's parts in parallel, their merge, then stage 2
    local model=$1 k=$2 pids=() status=0 architecture lr part
    for architecture in "${architectures[@]}"; do
        for lr in "${lrs[@]}"; do
            part=$results/grid_parts/${model}_k${k}_${architecture}_lr${lr}
            run "$part.log" --model "$model" --ks "$k" --architectures "$architecture" \
                --lrs "$lr" --tokens "$stage1_tokens" --work_dir "$work/grid/$model-k$k" \
                --out "$part.json" &
            pids+=($!)
        done
    done
    for pid in "${pids[@]}"; do wait "$pid" || status=1; done
    [ "$status" -eq 0 ] || return 1
    local stage1=$results/grid_stage1_${model}_k$k.json
    "$python" benchmarks/grid.py --merge "$results/grid_parts/${model}_k${k}_"*.json --out "$stage1"
    echo "$model k=$k: stage 1 done $(date -u +%T)"
    run "$results/grid_parts/${model}_k${k}_stage2.log" --model "$model" --ks "$k" \
        --stage2_from "$stage1" --tokens "$stage2_tokens" --work_dir "$work/grid2/$model-k$k" \
        --out "$results/grid_${model}_k$k.json"
    echo "$model k=$k: stage 2 done $(date -u +%T)"
}

pids=()
for pair in "$@"; do
    chain "${pair%%:*}" "${pair##*:}" &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit "$status"
