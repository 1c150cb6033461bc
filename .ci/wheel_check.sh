#!/usr/bin/env bash
# The pip user's path, checked: build the wheel, install it into a fresh virtualenv, and
# outside the repository copy a packaged config, train a tiny run from it and evaluate it.
# Everything runs offline after the package installs (a tiny Llama and tokenizer are made
# here from a config). Run by `make wheel-check`:
#   .ci/wheel_check.sh BUILD_PYTHON BASE_PYTHON TORCH_SPEC
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BUILD_PY=${1:-$REPO/.venv/bin/python}   # builds the wheel (has pip)
BASE_PY=${2:-python3}                   # makes the fresh virtualenv
TORCH_SPEC=${3:-torch==2.13.0}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tokenweight-wheel-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
START=$SECONDS
step() { echo "== [$((SECONDS - START)) s] $*"; }

step "build the wheel"
"$BUILD_PY" -m pip wheel -q --no-deps -w "$WORK/dist" "$REPO"
WHEEL=$(ls "$WORK"/dist/tokenweight-*.whl)
echo "wheel: $(basename "$WHEEL"), $(du -k "$WHEEL" | cut -f1) KiB"

step "fresh virtualenv: $TORCH_SPEC, then the wheel"
"$BASE_PY" -m venv "$WORK/venv"
BIN=$WORK/venv/bin
# --no-compile: no .pyc for the thousands of modules never imported here (much faster)
"$BIN/python" -m pip install -q --no-compile "$TORCH_SPEC" "$WHEEL"

cd "$WORK"   # outside the repository from here on: only the installed package is used
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

step "the command line answers"
"$BIN/tokenweight" --version
"$BIN/python" -m tokenweight --help > /dev/null
"$BIN/tokenweight" env
"$BIN/tokenweight" configs list > configs.txt
grep -q "^paper/dense_self " configs.txt || { echo "configs list lacks paper/dense_self"; exit 1; }

step "a packaged name resolves, with its inherited files and DeepSpeed file"
"$BIN/tokenweight" train paper/dense_self --print-config > paper.yaml
DS=$(sed -n 's/^  deepspeed: //p' paper.yaml)
test -f "$DS" || { echo "packaged DeepSpeed file not found: '$DS'"; exit 1; }

step "copy a packaged config"
"$BIN/tokenweight" configs copy cpu/smollm2 my_run.yaml

step "a tiny Llama, tokenizer and text, made offline"
"$BIN/python" - <<'EOF'
import random

import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

rng = random.Random(0)
words = [f"w{i}" for i in range(200)]
docs = [" ".join(rng.choice(words) for _ in range(600)) for _ in range(6)]
import pathlib

pathlib.Path("texts").mkdir()
for i, doc in enumerate(docs):
    pathlib.Path(f"texts/doc{i}.txt").write_text(doc + "\n")
tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
tok.train_from_iterator(docs, trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>", "<pad>"]))
fast = transformers.PreTrainedTokenizerFast(
    tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
)
config = transformers.LlamaConfig(
    vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512,
    bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
)
transformers.set_seed(0)
transformers.LlamaForCausalLM(config).save_pretrained("tiny")
fast.save_pretrained("tiny")
EOF

step "prepare"
"$BIN/tokenweight" prepare texts --tokenizer tiny --seq-len 128 --out prepared

step "train from the copied config"
"$BIN/tokenweight" train my_run.yaml model.source=tiny data.path=prepared data.seq_len=128 \
    scorer.window=32 train.max_steps=3 train.save_steps=3 train.warmup_steps=1 \
    train.output_dir=run
test -f run/model.safetensors || { echo "no trained model in run/"; exit 1; }

step "evaluate it"
"$BIN/tokenweight" eval start=tiny trained=run --data prepared --tasks ppl --bucket-size 32 \
    --max-sequences 4 --out eval --no-progress
test -f eval/results.json

step "wheel check passed"
