"""Token weighting in a plain ``transformers.Trainer`` through its ``compute_loss_func``.

Run: ``python examples/trainer_compute_loss_func.py`` (writes under ``runs/examples/``).
"""

# --8<-- [start:example]
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from tiny import tiny_model, tiny_texts, tiny_tokenizer  # stand-ins: use from_pretrained
from tokenweight import make_compute_loss_func
from tokenweight.core.scoring import SelfScorer
from tokenweight.training import TokenWeightCollator

tokenizer = tiny_tokenizer()
model = tiny_model(tokenizer)
dataset = Dataset.from_dict({"input_ids": tokenizer(tiny_texts(16))["input_ids"]})

trainer = Trainer(
    model=model,
    args=TrainingArguments(
        output_dir="runs/examples/trainer",
        max_steps=4,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
    ),
    train_dataset=dataset,  # rows with input_ids
    data_collator=TokenWeightCollator(pad_token_id=tokenizer.pad_token_id),
    compute_loss_func=make_compute_loss_func(
        model, "dense:0.75", SelfScorer(window=16, bos_token_id=tokenizer.bos_token_id)
    ),
)
result = trainer.train()
print(f"trained {result.global_step} steps, mean weighted loss {result.training_loss:.4f}")
# --8<-- [end:example]
