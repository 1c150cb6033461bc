#!/usr/bin/env bash
# Every GPU figure of the issues in one prepared run (one H200, about 6-8 minutes), for a
# session that is lent a GPU machine. From the repository root on that machine:
#
#   bash benchmarks/gpu_checks.sh [OUT_DIR]
#
# It needs torch with CUDA and transformers (the lent machine has both); `datasets` is not
# needed. Optional: carry the cut-cross-entropy wheel and pip install it first to time the
# `cce` backend too. Each step writes its table to OUT_DIR and continues on failure.
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

# 2. loss head: token_nll vs full logits vs the checkpointed 4096-chunk sketch (SPEC §6)
python3 benchmarks/bench_token_nll.py --device cuda --dtype bf16 --shapes 32768,2048,128256 \
    --repeats 3 2>&1 | tee "$out/token_nll.txt"
# 3. scoring: SPEC §6 setting, against one 32K forward and the one-window-at-a-time loop
python3 benchmarks/bench_scoring.py --device cuda --dtype bf16 --model-shape llama-1b \
    --seq-len 32768 --window 8192 --stride 6144 2>&1 | tee "$out/scoring.txt"
# 4. training step: uniform / dense-self / dense-precomputed / sparse-self
python3 benchmarks/bench_train_step.py --device cuda --dtype bf16 --model-shape llama-1b \
    --seq-len 32768 --window 8192 --stride 6144 --gradient-checkpointing --attn sdpa \
    --repeats 3 2>&1 | tee "$out/train_step.txt"
echo "tables in $out/"
