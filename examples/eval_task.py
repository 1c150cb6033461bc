"""Extending tokenweight: an evaluation task of your own, registered in the task table
that ``tokenweight eval``, its reports and the pipeline report read (no other file
changes).

Run: ``python examples/eval_task.py``.
"""

# --8<-- [start:example]
import math
from pathlib import Path

from tiny import tiny_model, tiny_texts, tiny_tokenizer  # stand-ins: use from_pretrained
from tokenweight.evaluation import evaluate_models
from tokenweight.evaluation.tasks import TEXT, Column, EvalTask, TaskSetting, register_eval_task


# A text task "tail": perplexity of the last `tail_tokens` targets of every sequence.
def run_tail(inputs):
    n = inputs.cfg.tail_tokens  # the task's own setting
    nll = inputs.long[:, -n:][inputs.seqs.target_mask[:, -n:]]  # long-context NLL, nats
    return {"perplexity": math.exp(nll.mean().item()), "targets": nll.numel()}


register_eval_task(
    EvalTask(
        "tail",
        TEXT,
        "perplexity of the last --tail-tokens targets",
        run_tail,
        settings=(TaskSetting("tail_tokens", 16, "targets at the end of each sequence"),),
        label="tail perplexity",
        columns=(Column("tail perplexity", "perplexity", 2), Column("targets", "targets")),
    )
)

tokenizer = tiny_tokenizer()
Path("runs/examples").mkdir(parents=True, exist_ok=True)
Path("runs/examples/texts.txt").write_text("\n\n".join(tiny_texts(4)))
results = evaluate_models(
    [("tiny", tiny_model(tokenizer), tokenizer)],
    out_dir="runs/examples/eval",
    tasks=["ppl", "tail"],
    data=["runs/examples/texts.txt"],
    seq_len=64,
    tail_tokens=8,
    progress=False,
)
tail = results["models"][0]["tail"]
print(f"tail perplexity {tail['perplexity']:.2f} over {tail['targets']} targets")
# --8<-- [end:example]
