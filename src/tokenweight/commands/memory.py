"""``tokenweight memory``: estimate the peak training memory per GPU of a setup."""

from __future__ import annotations

import argparse

HELP = "estimate the peak training memory per GPU (model shape, sequence length, ZeRO, FSDP2, SP)"

EPILOG = """\
examples:
  tokenweight memory --model llama-3-8b --seq-len 32768 --gpus 8 --zero-stage 3
  tokenweight memory --model llama-3-8b --seq-len 131072 --gpus 8 --zero-stage 3 --sp 8
  tokenweight memory --model llama-3-8b --seq-len 32768 --gpus 8 --fsdp --offload-params
  tokenweight memory --model path/to/model --seq-len 32768 --precision pure
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument(
        "--model",
        required=True,
        help="a known shape (llama-3-8b, llama-3.2-1b, llama-2-7b, smollm2-135m), a model "
        "folder or a config.json",
    )
    parser.add_argument("--seq-len", type=int, required=True, help="tokens per sequence")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs (processes), default 1")
    parser.add_argument("--zero-stage", type=int, default=0, choices=(0, 1, 2, 3))
    parser.add_argument("--sp", type=int, default=1, help="sequence-parallel degree")
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument(
        "--precision",
        choices=("mixed", "pure"),
        default="mixed",
        help="mixed: DeepSpeed bf16 with fp32 AdamW state (default); pure: all bf16, one GPU",
    )
    parser.add_argument(
        "--fsdp",
        action="store_true",
        help="FSDP2 full sharding over --gpus instead of ZeRO (fp32 shards, bf16 compute)",
    )
    parser.add_argument("--offload-optimizer", action="store_true")
    parser.add_argument(
        "--offload-params",
        action="store_true",
        help="CPU offload of the weights (ZeRO-3); with --fsdp, of weights, gradients and "
        "optimizer state",
    )


def _shape(model: str):
    import json
    from pathlib import Path

    from tokenweight.infra.errors import TokenWeightError
    from tokenweight.training.memory import MODEL_SHAPES, shape_from_config

    if model.lower() in MODEL_SHAPES:
        return MODEL_SHAPES[model.lower()]
    path = Path(model)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise TokenWeightError(
            f"--model: {model} is neither a known shape ({', '.join(MODEL_SHAPES)}) nor a "
            "model folder or config.json"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TokenWeightError(f"--model: cannot read {path}: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("text_config"), dict):
        data = data["text_config"]
    return shape_from_config(data, f"--model {path}")


def _check_options(args: argparse.Namespace) -> None:
    """Step: the numbers given, named by their flags."""
    from tokenweight.infra.errors import TokenWeightError
    from tokenweight.infra.schema import at_least_two, positive, require

    require(args.seq_len, at_least_two, "--seq-len")
    require(args.gpus, positive, "--gpus")
    require(args.sp, positive, "--sp")
    require(args.micro_batch, positive, "--micro-batch")
    if args.gpus % args.sp:
        raise TokenWeightError(f"--sp {args.sp} must divide --gpus {args.gpus}")
    if args.seq_len % args.sp:
        raise TokenWeightError(f"--sp {args.sp} must divide --seq-len {args.seq_len}")


def run(args: argparse.Namespace) -> int:
    from tokenweight.training.memory import estimate_memory, format_estimate

    _check_options(args)
    shape = _shape(args.model)
    estimate = estimate_memory(
        shape,
        args.seq_len,
        gpus=args.gpus,
        zero_stage=args.zero_stage,
        sequence_parallel=args.sp,
        micro_batch=args.micro_batch,
        precision=args.precision,
        offload_optimizer=args.offload_optimizer,
        offload_parameters=args.offload_params,
        fsdp=args.fsdp,
    )
    print(f"{shape.parameters() / 1e9:.2f}B parameters")
    print(format_estimate(estimate))
    return 0
