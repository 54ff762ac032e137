#!/usr/bin/env bash
# The GPU runs behind results/*-gpu*: full-protocol baselines, the benchmarks on GPU, two metric searches,
# the selection of the formula to confirm (validation split only) and its confirmation on test.
#
#   bash scripts/gpu_results.sh warm baselines search select confirm bench structural   # all, in this order
#   bash scripts/gpu_results.sh moe     # a real mixture of experts from the hub (MOE_MODEL), independent of the rest
#   bash scripts/gpu_results.sh bigmodel   # docs/guides/big-models.md's tour on a 7B model (BIG_MODEL), independent
#
# (The committed run did `warm`, `baselines`, `search` (SEARCH_MIN=5.5), `select confirm bench`, `structural`.)
# Stages write under $RES (default results/, the committed layout: baselines, search-gpu-*, selection-gpu,
# confirm-gpu, gpu-logs); each can run alone (select/confirm read earlier stages' files; baselines rows and
# searches resume). Defaults are the published protocol (seqlen 2048, 128 C4 windows, all test windows, fp16 on the GPU).
# Smoke test on a CPU (7 min): RES=/tmp/smoke DEVICE=cpu SEQLEN=128 NSAMPLES=2 EVALW=2 BATCH=2 POP=6 SEARCH_MIN=2 TOP=2 bash ...
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
RES=${RES:-results}
DEVICE=${DEVICE:-cuda}
SEQLEN=${SEQLEN:-2048}
NSAMPLES=${NSAMPLES:-128}
BATCH=${BATCH:-8}
EVALW=${EVALW:-}                 # empty: every window (the protocol)
SEARCH_MIN=${SEARCH_MIN:-5.5}    # wall-time ceiling of each search in minutes, model and statistics included (resumable)
POP=${POP:-40}
TOP=${TOP:-5}
SEEDS=${SEEDS:-0,1,2}             # calibration seeds of the select and confirm stages (>= 3: spreads)
MOE_MODEL=${MOE_MODEL:-allenai/OLMoE-1B-7B-0924}   # the moe stage's model: a hub id (needs the hub) or a local folder
MOE_SEARCH_MIN=${MOE_SEARCH_MIN:-60}               # the moe stage's expert-score search, minutes (resumable)
BIG_MODEL=${BIG_MODEL:-Qwen/Qwen2.5-7B}             # the bigmodel stage's model: a hub id or a local folder
BIG_SEARCH_MIN=${BIG_SEARCH_MIN:-60}               # the bigmodel stage's search, minutes (resumable)
mkdir -p "$RES/gpu-logs"
ew=(); [ -n "$EVALW" ] && ew=(--eval-windows "$EVALW")
common=(--device "$DEVICE" --seqlen "$SEQLEN" --nsamples "$NSAMPLES" --batch-size "$BATCH")
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

stage_warm() {
  # dequantise + cache the model and the one-shot statistics once, before stages run side by side
  $PY - <<EOF
import time, torch, transformers
t = time.time()
from prunerzero.models import load_model
from prunerzero.pipeline import CalibConfig, one_shot_stats
print("torch", torch.__version__, "transformers", transformers.__version__,
      torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")
lm = load_model("smollm2", device="$DEVICE", seqlen=$SEQLEN)
print(f"model loaded in {time.time() - t:.0f}s")
one_shot_stats(lm, CalibConfig($NSAMPLES, 0, $BATCH), progress=False)
print(f"one-shot X and G ready after {time.time() - t:.0f}s")
EOF
}

stage_baselines() {
  $PY -m prunerzero.cli bench grids/baselines.yaml --out "$RES/baselines" "${common[@]}" "${ew[@]}"
}

stage_bench() {
  local dev_models="smollm2,llama2-7b-shape"
  # one row per measurement in $RES/prune-eval-gpu/rows.jsonl, table $RES/prune-eval-gpu.md (a rerun measures only
  # what is missing; results/benchmarks.md holds the committed H100 numbers of this stage)
  $PY benchmarks/prune_eval.py --devices "$DEVICE" --windows 8 --batch-size "$BATCH" --seqlen "$SEQLEN" \
    --models "$dev_models" --out "$RES/prune-eval-gpu"
}

stage_search() {
  # the paper's space and the extended one, side by side on the one GPU (each is mostly launch-bound)
  local s pids=(); for s in prunerzero extended; do
    local out="$RES/search-gpu-$s" args=(--resume "$RES/search-gpu-$s")
    [ -f "$out/checkpoint.json" ] || args=(--space "search_spaces/$s.yaml" --out "$out" --population "$POP"
                                           "${common[@]}" "${ew[@]}")
    $PY -m prunerzero.cli search "${args[@]}" --max-minutes "$SEARCH_MIN" --quiet > "$RES/gpu-logs/search-$s.log" 2>&1 &
    pids+=($!)
  done
  local failed=0 pid; for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  tail -n 14 "$RES"/gpu-logs/search-*.log
  return $failed
}

stage_select() {
  $PY -m prunerzero.cli select "$RES/search-gpu-prunerzero" "$RES/search-gpu-extended" \
    --top "$TOP" --also ria,pruner-zero --patterns u,2:4 --seeds "$SEEDS" "${common[@]}" "${ew[@]}" \
    --out "$RES/selection-gpu"
}

chosen() {  # the formula the select stage chose, or a one-line error
  local found; found=$($PY -c "from prunerzero.report import chosen_formula; print(chosen_formula('$RES/selection-gpu.json') or '')") \
    || { echo "no selection: run the select stage first" >&2; return 2; }
  [ -n "$found" ] || { echo "the selection chose no formula (all candidates were known metrics or failed): search longer" >&2; return 2; }
  echo "$found"
}

stage_confirm() {
  local found; found=$(chosen) || return 2
  echo "confirming $found"
  $PY -m prunerzero.cli bench grids/confirm-gpu.yaml --out "$RES/confirm-gpu" --formula "found=$found" \
    --seeds "$SEEDS" "${common[@]}" "${ew[@]}"
  local pat tag; for pat in "" 2:4; do
    tag=${pat:-u}; tag=${tag/:/of}
    $PY -m prunerzero.cli prune --metric "$found" --sparsity 0.5 ${pat:+--pattern $pat} --sequential --skip-dense \
      "${common[@]}" "${ew[@]}" --eval wikitext2,c4 --quiet --json "$RES/confirm-gpu/prune-found-$tag.json"
  done
}

stage_structural() {
  # the selected formula seeds the forward-only policy-gradient structural pruner (KV groups + MLP channels)
  local found; found=$(chosen) || return 2
  # (grids/structural-gpu.yaml: 20% and 30%, policy gradient from the formula and from const, 300 steps, lr 0.02,
  # and one-shot by the formula's structure scores; rows resume, so a stopped call is finished by the same call)
  $PY -m prunerzero.cli bench grids/structural-gpu.yaml --out "$RES/structural-gpu" --formula "found=$found" \
    --device "$DEVICE" --seqlen "$SEQLEN" "${ew[@]}"
}

stage_bigmodel() {
  # the guide's tour (docs/guides/big-models.md) on a 7B model: the paper's space (W, X, G) with the model spread by
  # --device-map over the GPUs there are (one is enough for a 7B in fp16) and the gradient statistics kept as
  # fp16; then select on validation, prune with the pick (2:4), save, and evaluate the saved model
  local out="$RES/bigmodel" run="$RES/bigmodel/search"
  mkdir -p "$out"
  local sargs=(--space prunerzero --model "$BIG_MODEL" --device-map auto --dtype fp16 --grad-storage fp16
               --seqlen "$SEQLEN" --nsamples "$NSAMPLES" --out "$run")
  [ -f "$run/checkpoint.json" ] && sargs=(--resume "$run")
  $PY -m prunerzero.cli search "${sargs[@]}" --max-minutes "$BIG_SEARCH_MIN" --quiet || return 1
  [ -f "$run/selection.json" ] || $PY -m prunerzero.cli select "$run" --seeds "$SEEDS" --device "$DEVICE" \
    --dtype fp16 --seqlen "$SEQLEN" --batch-size "$BATCH" || return 1
  [ -f "$out/prune.json" ] || $PY -m prunerzero.cli prune --model "$BIG_MODEL" --metric "$run" --pattern 2:4 \
    --grad-storage fp16 --dtype fp16 --skip-dense --save "$out/pruned" --json "$out/prune.json" "${common[@]}" \
    "${ew[@]}" || return 1
  $PY -m prunerzero.cli eval --model "$out/pruned" --dtype fp16 --eval wikitext2,c4 --json "$out/eval.json" \
    --device "$DEVICE" --seqlen "$SEQLEN" --batch-size "$BATCH" "${ew[@]}"
}

stage_moe() {
  # A real mixture of experts (OLMoE-1B-7B: 16 layers of 64 experts, 8 per token; bf16, as it was trained): pruning
  # inside every expert (routed calibration), then whole experts by frequency, REAP, a formula and a searched score,
  # then STUN (experts first, Wanda inside the rest). Every run writes one JSON under $RES/moe-gpu (perplexity, the MoE line's counts);
  # a JSON already there is not run again. tests/test_moe.py parses every command of this stage with the CLI parser.
  local out="$RES/moe-gpu" moe=(--model "$MOE_MODEL" --dtype bf16 --eval wikitext2 --quiet "${common[@]}" "${ew[@]}")
  mkdir -p "$out"
  [ -f "$out/dense.json" ] || $PY -m prunerzero.cli eval --model "$MOE_MODEL" --dtype bf16 --eval wikitext2 --quiet \
    --device "$DEVICE" --seqlen "$SEQLEN" --batch-size "$BATCH" "${ew[@]}" --json "$out/dense.json" || return 1
  local args tag
  for args in "wanda --sparsity 0.5 --sequential" "wanda --pattern 2:4 --sequential" "sparsegpt --sparsity 0.5 --sequential" \
              "sparsegpt --pattern 2:4 --sequential"; do
    tag=${args// --/-}; tag=${tag// /}; tag=${tag/:/of}
    [ -f "$out/prune-$tag.json" ] || $PY -m prunerzero.cli prune --metric $args --skip-dense "${moe[@]}" \
      --json "$out/prune-$tag.json" || return 1
  done
  # the expert score searched on WikiText-2 validation (scripts/moe_experts_space.yaml: drops 25% and 50%), then tested like the rest
  local run="$out/search-experts" found
  local sargs=(--space scripts/moe_experts_space.yaml --model "$MOE_MODEL" --out "$run" --dtype bf16 "${common[@]}")
  [ -f "$run/checkpoint.json" ] && sargs=(--resume "$run")
  $PY -m prunerzero.cli search "${sargs[@]}" --max-minutes "$MOE_SEARCH_MIN" --quiet || return 1
  found=$($PY -c "from prunerzero.search.engine import read_evaluations as r, fitness_value as f
print(min((x for x in r('$run') if not x.get('error')), key=f)['formula'])") || return 1
  echo "searched expert score: $found"
  local drop score name
  for drop in 0.25 0.5; do
    for score in frequency reap "mul(freq, onorm)" "$found"; do
      name=${score//[^a-z]/}; [ "$score" = "$found" ] && name=searched
      [ -f "$out/experts-$name-$drop.json" ] || $PY -m prunerzero.cli experts --drop "$drop" --score "$score" \
        --skip-dense "${moe[@]}" --json "$out/experts-$name-$drop.json" || return 1
    done
  done
  # STUN: 25% of the experts by REAP (saved: a stock checkpoint with 48 experts per layer), then Wanda 50% inside
  [ -f "$out/experts-reap-0.25-saved/config.json" ] || $PY -m prunerzero.cli experts --drop 0.25 --score reap \
    --skip-dense "${moe[@]}" --save "$out/experts-reap-0.25-saved" --json "$out/stun-experts.json" || return 1
  local stun=(--model "$out/experts-reap-0.25-saved" --dtype bf16 --eval wikitext2 --quiet "${common[@]}" "${ew[@]}")
  [ -f "$out/stun-wanda.json" ] || $PY -m prunerzero.cli prune --metric wanda --sparsity 0.5 --sequential \
    --skip-dense "${stun[@]}" --json "$out/stun-wanda.json"
}

[ $# -gt 0 ] || { echo "usage: bash scripts/gpu_results.sh STAGE... (warm baselines search select confirm bench structural moe bigmodel)" >&2; exit 2; }
for stage in "$@"; do
  declare -F "stage_$stage" >/dev/null || { echo "unknown stage '$stage': use warm baselines search select confirm bench structural moe bigmodel" >&2; exit 2; }
done
for stage in "$@"; do
  echo "=== $stage ($(date -u +%H:%M:%S))"
  t0=$(date +%s)
  "stage_$stage" 2>&1 | tee "$RES/gpu-logs/$stage.log" || { echo "=== $stage FAILED (see $RES/gpu-logs/$stage.log)"; exit 1; }
  echo "=== $stage done in $(( $(date +%s) - t0 )) s"
done
