"""Token weighting in TRL's ``SFTTrainer``: ``TokenWeightTrainer`` first in a subclass.

TRL keeps its dataset preparation and collator (here padding-free ``bfd`` packing); only
the loss is replaced. Needs ``pip install 'tokenweight[trl]'``.
Run: ``python examples/trl_sft.py`` (writes under ``runs/examples/``).
"""

# --8<-- [start:example]
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from tiny import tiny_model, tiny_texts, tiny_tokenizer  # stand-ins: use from_pretrained
from tokenweight.core.scoring import SelfScorer
from tokenweight.training import TokenWeightTrainer


class TokenWeightSFTTrainer(TokenWeightTrainer, SFTTrainer):
    pass


tokenizer = tiny_tokenizer()
model = tiny_model(tokenizer)
dataset = Dataset.from_dict({"text": tiny_texts(16)})

trainer = TokenWeightSFTTrainer(
    model=model,
    args=SFTConfig(
        output_dir="runs/examples/trl",
        max_length=256,
        packing=True,  # bfd, padding-free: documents side by side in one row
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        bf16=False,  # the tiny model trains in float32 on a CPU; keep the default on a GPU
        report_to="none",
        save_strategy="no",
    ),
    train_dataset=dataset,
    processing_class=tokenizer,
    scheme="dense:0.75",
    scorer=SelfScorer(window=16, bos_token_id=tokenizer.bos_token_id),
)
result = trainer.train()
print(f"trained {result.global_step} steps, mean weighted loss {result.training_loss:.4f}")
# --8<-- [end:example]
