"""Token weighting in a hand-written training loop: ``token_weighted_loss`` per micro-batch.

``num_items``, the valid-target count of the whole optimizer step, makes gradient
accumulation give the gradient of one big batch.
Run: ``python examples/training_loop.py``.
"""

# --8<-- [start:example]
import torch

from tiny import tiny_model, tiny_texts, tiny_tokenizer  # stand-ins: use from_pretrained
from tokenweight.core.scoring import SelfScorer
from tokenweight.training import TokenWeightCollator, count_valid_targets, token_weighted_loss

tokenizer = tiny_tokenizer()
model = tiny_model(tokenizer)
collate = TokenWeightCollator(pad_token_id=tokenizer.pad_token_id)
rows = [{"input_ids": ids} for ids in tokenizer(tiny_texts(16))["input_ids"]]
micro_batches = [collate(rows[i : i + 4]) for i in range(0, 16, 4)]
steps = [micro_batches[0:2], micro_batches[2:4]]  # 2 optimizer steps of 2 micro-batches

optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
scorer = SelfScorer(window=16, bos_token_id=tokenizer.bos_token_id)
model.train()
for step, micro_batches in enumerate(steps, start=1):  # the micro-batches of one step
    num_items = sum(count_valid_targets(b) for b in micro_batches)
    for batch in micro_batches:
        parts = token_weighted_loss(
            model, batch, "dense:0.75", scorer, num_items=num_items, raise_on_nonfinite=True
        )
        parts.loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    weights = parts.weights[parts.mask]  # of the step's last micro-batch
    print(f"step {step}: {int(num_items)} targets, weights {weights.min():.2f}-{weights.max():.2f}")
# --8<-- [end:example]
