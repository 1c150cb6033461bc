"""Precomputed scores: score the data once with the start model, then train.

The same steps as ``tokenweight prepare``, ``tokenweight score`` and a config with
``scorer: {kind: precomputed}``, from Python. Every row's scores are checked against the
hash of its tokens when it is batched.
Run: ``python examples/precomputed_scores.py`` (writes under ``runs/examples/``).
"""

# --8<-- [start:example]
from pathlib import Path

from transformers import TrainingArguments

from tiny import tiny_model, tiny_texts, tiny_tokenizer  # stand-ins: use from_pretrained
from tokenweight.core.scoring import PrecomputedScorer
from tokenweight.data import load_scored_dataset, prepare_dataset, score_dataset
from tokenweight.training import TokenWeightCollator, TokenWeightTrainer

work = Path("runs/examples/precomputed")
tokenizer = tiny_tokenizer()
model = tiny_model(tokenizer)
model.save_pretrained(work / "start")  # the scorer: the start model, as a folder
tokenizer.save_pretrained(work / "start")
(work / "corpus").mkdir(parents=True, exist_ok=True)
for i, text in enumerate(tiny_texts(8, words=256)):  # 8 documents, one file each
    (work / "corpus" / f"{i}.txt").write_text(text)

prepare_dataset(
    [str(work / "corpus")],
    tokenizer=tokenizer,
    seq_len=64,
    out=work / "prepared",
    overwrite=True,
)
score_dataset(
    work / "prepared",
    work / "scored",
    scorer=work / "start",
    window=16,
    device="cpu",
    overwrite=True,
    progress=False,
)
dataset = load_scored_dataset(work / "scored")  # input_ids, short_nll, input_hash, row

trainer = TokenWeightTrainer(
    model=model,
    args=TrainingArguments(
        output_dir=str(work / "run"),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
    ),
    train_dataset=dataset,
    data_collator=TokenWeightCollator(pad_token_id=tokenizer.pad_token_id),
    scheme="sparse:0.25",
    scorer=PrecomputedScorer(),
)
result = trainer.train()
print(
    f"{len(dataset)} scored rows; trained {result.global_step} steps, "
    f"mean weighted loss {result.training_loss:.4f}"
)
# --8<-- [end:example]
