#!/usr/bin/env bash
# The GPU measurements of this package in one run (one H200: about 6-8 minutes):
#   1. correctness of token_nll on CUDA: values and gradients against F.cross_entropy on full
#      logits, in fp32 and bf16;
#   2. the loss head at 32768 x 2048 x 128256 in bf16: token_nll against full logits and
#      against cross-entropy on checkpointed 4096-token chunks (time, peak memory);
#   3. short-context scoring of one 32768-token sequence (Llama-3.2-1B shape, random
#      weights, windows 8192, stride 6144) against one long forward and a one-window-at-a-
#      time loop;
#   4. a training step in that setting (gradient checkpointing, sdpa): uniform, Dense 0.75
#      self-scored, Dense 0.75 precomputed, Sparse 0.25 self-scored.
# From the repository root of a CUDA machine:
#
#   bash benchmarks/gpu_checks.sh [OUT_DIR]     # default OUT_DIR: gpu-results
#
# Needs torch with CUDA and transformers (`datasets` is not needed). With cut-cross-entropy
# installed (`pip install 'tokenweight[cce]'`) the `cce` backend is timed too. Each step
# writes its table to OUT_DIR and the script continues past a failed step.
set -uo pipefail
out=${1:-gpu-results}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"

# 1. correctness on CUDA: token_nll values/gradients against F.cross_entropy in bf16/fp32
python3 - <<'PY' 2>&1 | tee "$out/cuda_correctness.txt"
import torch, torch.nn.functional as F
from tokenweight.losses import token_nll
torch.manual_seed(0)
for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
    h = torch.randn(4099, 256, device="cuda", dtype=dtype, requires_grad=True)
    w = (torch.randn(32000, 256, device="cuda") * 0.05).to(dtype).requires_grad_()
    y = torch.randint(0, 32000, (4099,), device="cuda"); y[::7] = -100
    g = torch.rand(4099, device="cuda")
    ours = token_nll(h, w, y, backend="chunked"); (ours * g).sum().backward()
    gh, gw = h.grad.clone(), w.grad.clone(); h.grad = w.grad = None
    ref = F.cross_entropy((h.float() @ w.float().T), y, reduction="none", ignore_index=-100)
    (ref * g).sum().backward()
    pairs = [(ours, ref), (gh, h.grad), (gw, w.grad)]
    errs = [((a.float() - b.float()).abs().max() / b.float().abs().max()).item() for a, b in pairs]
    print(dtype, "max rel err nll/dh/dw", ["%.2e" % e for e in errs], "OK" if max(errs) < tol else "FAIL")
PY

# 2. loss head: token_nll vs full logits vs the checkpointed 4096-token-chunk sketch
python3 benchmarks/bench_token_nll.py --device cuda --dtype bf16 --shapes 32768,2048,128256 \
    --repeats 3 2>&1 | tee "$out/token_nll.txt"
# 3. scoring: against one 32K forward and the one-window-at-a-time loop
python3 benchmarks/bench_scoring.py --device cuda --dtype bf16 --model-shape llama-1b \
    --seq-len 32768 --window 8192 --stride 6144 2>&1 | tee "$out/scoring.txt"
# 4. training step: uniform / dense-self / dense-precomputed / sparse-self
python3 benchmarks/bench_train_step.py --device cuda --dtype bf16 --model-shape llama-1b \
    --seq-len 32768 --window 8192 --stride 6144 --gradient-checkpointing --attn sdpa \
    --repeats 3 2>&1 | tee "$out/train_step.txt"
echo "tables in $out/"
