"""``TokenWeightTrainer``: the Trainer of ``tokenweight train`` in your own set-up.

It never builds full logits, logs the weight statistics and stops on non-finite values.
Run: ``python examples/token_weight_trainer.py`` (writes under ``runs/examples/``).
"""

# --8<-- [start:example]
from datasets import Dataset
from transformers import TrainingArguments

from tiny import tiny_model, tiny_texts, tiny_tokenizer  # stand-ins: use from_pretrained
from tokenweight.core.scoring import SelfScorer
from tokenweight.training import TokenWeightCollator, TokenWeightTrainer

tokenizer = tiny_tokenizer()
model = tiny_model(tokenizer)
dataset = Dataset.from_dict({"input_ids": tokenizer(tiny_texts(16))["input_ids"]})

trainer = TokenWeightTrainer(
    model=model,
    args=TrainingArguments(
        output_dir="runs/examples/token_weight_trainer",
        max_steps=4,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
        activation_checkpointing=True,  # older transformers 5 releases: gradient_checkpointing
        activation_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=2,
        report_to="none",
        save_strategy="no",
    ),
    train_dataset=dataset,  # rows with input_ids (+ attention_mask)
    data_collator=TokenWeightCollator(pad_token_id=tokenizer.pad_token_id),
    scheme="dense:0.75",
    scorer=SelfScorer(window=16, stride=12, bos_token_id=tokenizer.bos_token_id),
)
result = trainer.train()
logged = [entry for entry in trainer.state.log_history if "weighted_loss" in entry]
print(
    f"trained {result.global_step} steps; last log: weighted loss "
    f"{logged[-1]['weighted_loss']:.4f}, weights up to {logged[-1]['weight_max']:.2f}"
)
# --8<-- [end:example]
