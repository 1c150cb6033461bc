#!/usr/bin/env bash
# The GPU-only measurements of this package in two calls within one 15-minute GPU lease
# (parts, budgets and files: benchmarks/gpu_checks.py; the bundle: `make gpu-bundle`).
#
#   bash benchmarks/gpu_checks.sh --dry-run                  # the plan; checks settings
#   bash benchmarks/gpu_checks.sh --call 1 --out "$OUT"      # carry .gpu-bundle/base and
#                                                            #   .gpu-bundle/model-1
#   bash benchmarks/gpu_checks.sh --call 2 --out "$OUT"      # carry .gpu-bundle/base and
#                                                            #   .gpu-bundle/model-2
#
# Call 1: CUDA correctness (token_nll fp32/bf16 against full-logit cross-entropy, the
# cut-cross-entropy backend, one training step per loss path against the CPU) and the
# performance table of the reference setting (Llama-3.2-1B shape, one 32K sequence, bf16,
# gradient checkpointing, SDPA). Call 2: the mini-study on SmolLM2-135M extended 4x.
# Each part runs under its own deadline, writes its results as soon as it ends and is
# skipped when rerun (state in --state, default /tmp/tokenweight-gpu, outside the
# checkout). OUT receives results.json, plan.txt, the call's log and study.md.
# `--setting rehearsal` runs the same parts at CPU size (CI: `make gpu-rehearsal`).
# Turn the results into the docs' tables: python benchmarks/gpu_tables.py OUT/results.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
args=(run)
call=
while (($#)); do
    case "$1" in
        --call) call=$2; args+=(--call "$2"); shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
if [[ " ${args[*]} " == *" --dry-run "* && -z "$call" ]]; then
    args+=(--call 1 --out /dev/null)
fi
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu_checks.py "${args[@]}"
