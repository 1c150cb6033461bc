"""The training config the training tests start from: a tiny model on prepared data, a
few optimizer steps on CPU without a progress bar. Each test states only what it changes
(keyword overrides); ``exact=True`` is the setting of the equality tests (plain SGD at a
constant rate, no clipping, one sequence per micro-batch), where any error in a gradient's
scale moves the parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TRAIN = {
    "learning_rate": 1e-3,
    "warmup_steps": 0,
    "max_steps": 2,
    "micro_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "save_steps": 100,
    "seed": 0,
}
EXACT = {
    "learning_rate": 0.5,
    "scheduler": "constant",
    "micro_batch_size": 1,
    "max_grad_norm": 0.0,  # clipping would hide a wrong gradient scale
}


def tiny_train_config(
    model: Path | str,
    data: Path | str,
    output_dir: Path | str,
    *,
    scheme: str = "dense:0.75",
    scorer: dict[str, Any] | None = None,
    window: int = 8,
    stride: int | None = None,
    exact: bool = False,
    optim: str | None = None,
    model_options: dict[str, Any] | None = None,
    data_options: dict[str, Any] | None = None,
    **train: Any,
) -> dict[str, Any]:
    """The config as a dict (for ``load_config(base=...)`` or a YAML file).

    ``scorer`` entries replace those of the self scorer over ``window``/``stride``;
    ``train`` entries replace those of the ``train`` section; ``optim`` is the Trainer's
    optimizer (plain SGD with ``exact``); ``model_options``/``data_options`` are added to
    those sections.
    """
    scorer_section: dict[str, Any] = {"kind": "self", "window": window}
    if stride is not None:
        scorer_section["stride"] = stride
    training_arguments: dict[str, Any] = {"disable_tqdm": True}
    if optim is not None or exact:
        training_arguments = {"optim": optim or "sgd", **training_arguments}
    return {
        "model": {"source": str(model), **(model_options or {})},
        "data": {"path": str(data), **(data_options or {})},
        "scheme": scheme,
        "scorer": {**scorer_section, **(scorer or {})},
        "train": {
            "output_dir": str(output_dir),
            **TRAIN,
            **(EXACT if exact else {}),
            "training_arguments": training_arguments,
            **train,
        },
    }
