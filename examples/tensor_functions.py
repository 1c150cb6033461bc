"""The core as pure tensor functions: long NLL, short NLL, weights, loss.

Run: ``python examples/tensor_functions.py``.
"""

# --8<-- [start:example]
import torch

from tiny import tiny_model, tiny_texts, tiny_tokenizer  # stand-ins: use from_pretrained
from tokenweight import Scheme, compute_weights, weighted_nll_loss
from tokenweight.core.losses import model_token_nll
from tokenweight.core.scoring import short_context_nll

tokenizer = tiny_tokenizer()
model = tiny_model(tokenizer)
input_ids = tokenizer(tiny_texts(4), return_tensors="pt")["input_ids"]  # (B, N): 4 x 65
bos = tokenizer.bos_token_id

long_nll = model_token_nll(model, input_ids)  # (B, N-1) fp32, no full logits
with torch.no_grad():
    short_nll = short_context_nll(model, input_ids, window=16, bos_token_id=bos)
weights = compute_weights(long_nll, short_nll, Scheme.parse("dense:0.75"))  # detached
loss = weighted_nll_loss(long_nll, weights)  # mean over valid targets
loss.backward()
print(f"loss {loss.item():.4f}, mean weight {weights.mean().item():.4f}")
# --8<-- [end:example]
