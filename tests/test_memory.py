"""The memory calculator against hand computations, real parameter counts and the
peak measured on one H200 (Llama-3.2-1B shape, 32K tokens, bf16, checkpointing)."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from tokenweight.cli import main
from tokenweight.infra.errors import TokenWeightError
from tokenweight.training.memory import GIB, MODEL_SHAPES, estimate_memory, shape_from_config


def test_parameter_counts_match_the_published_and_a_built_model():
    assert MODEL_SHAPES["llama-3-8b"].parameters() == 8_030_261_248
    assert MODEL_SHAPES["llama-3.2-1b"].parameters() == 1_235_814_400
    for tied in (False, True):
        config = LlamaConfig(
            hidden_size=64,
            num_hidden_layers=3,
            intermediate_size=96,
            num_attention_heads=8,
            num_key_value_heads=2,
            vocab_size=300,
            tie_word_embeddings=tied,
        )
        model = LlamaForCausalLM(config)
        assert shape_from_config(config).parameters() == sum(p.numel() for p in model.parameters())


def test_zero3_with_sequence_parallel_by_hand():
    shape = MODEL_SHAPES["llama-3-8b"]
    p = 8_030_261_248
    layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    est = estimate_memory(shape, 131072, gpus=8, zero_stage=3, sequence_parallel=8)
    s = 131072 // 8
    assert est.tokens_per_gpu == s
    assert est.parameters == 2 * p // 8 + 4 * layer
    assert est.gradients == 2 * p // 8
    assert est.optimizer == 12 * p // 8
    assert est.checkpoints == 32 * s * 4096 * 2
    assert est.working == s * (4 * 4096 + 2 * 1024 + 3 * 14336) * 2
    assert est.total == sum(
        (est.parameters, est.gradients, est.optimizer, est.checkpoints, est.working)
    )
    # ZeRO-2 keeps whole weights; offloading the optimizer removes its state from the GPU
    z2 = estimate_memory(shape, 32768, gpus=8, zero_stage=2, offload_optimizer=True)
    assert (z2.parameters, z2.gradients, z2.optimizer) == (2 * p, 2 * p // 8, 0)


def test_fsdp2_full_shard_and_cpu_offload_by_hand(capsys):
    shape = MODEL_SHAPES["llama-3-8b"]
    p, layer = 8_030_261_248, shape.layer_parameters()
    est = estimate_memory(shape, 32768, gpus=8, fsdp=True)
    assert est.parameters == 4 * p // 8 + 2 * 2 * layer  # fp32 shard + bf16 gathered layers
    assert est.gradients == 4 * p // 8 + 2 * layer
    assert est.optimizer == 8 * p // 8
    zero3 = estimate_memory(shape, 32768, gpus=8, zero_stage=3)
    # the same 16 sharded bytes per parameter as ZeRO-3, split differently
    sharded = est.parameters + est.gradients + est.optimizer - 6 * layer
    assert sharded == zero3.parameters + zero3.gradients + zero3.optimizer - 4 * layer == 2 * p
    offload = estimate_memory(shape, 32768, gpus=8, fsdp=True, offload_parameters=True)
    assert (offload.parameters, offload.gradients, offload.optimizer) == (
        4 * layer,
        2 * layer,
        0,
    )
    assert offload.checkpoints == est.checkpoints  # activations stay on the GPU
    with pytest.raises(TokenWeightError, match="choose one"):
        estimate_memory(shape, 32768, gpus=8, fsdp=True, zero_stage=3)
    with pytest.raises(TokenWeightError, match="--offload-params"):
        estimate_memory(shape, 32768, gpus=8, fsdp=True, offload_optimizer=True)
    command = ["memory", "--model", "llama-3-8b", "--seq-len", "32768", "--gpus", "8", "--fsdp"]
    assert main([*command, "--offload-params"]) == 0
    assert f"{(offload.total) / GIB:8.2f} GiB" in capsys.readouterr().out


def test_the_one_gpu_estimate_is_near_the_measured_peak():
    # measured: 11.8 GiB peak, Llama-3.2-1B shape, one 32768-token sequence, bf16 weights
    # and AdamW state, gradient checkpointing, the chunked loss head
    est = estimate_memory(MODEL_SHAPES["llama-3.2-1b"], 32768, precision="pure")
    assert abs(est.total / GIB - 11.8) / 11.8 < 0.05


def test_bad_settings_are_named(capsys):
    with pytest.raises(TokenWeightError, match="must divide seq_len"):
        estimate_memory(MODEL_SHAPES["llama-3-8b"], 1004, gpus=8, sequence_parallel=8)
    with pytest.raises(TokenWeightError, match="must divide the number of GPUs"):
        estimate_memory(MODEL_SHAPES["llama-3-8b"], 1024, gpus=6, sequence_parallel=4)
    assert main(["memory", "--model", "no-such-model", "--seq-len", "8"]) == 2
    assert "error: --model" in capsys.readouterr().err
    assert main(["memory", "--model", "llama-3-8b", "--seq-len", "32768", "--gpus", "8"]) == 0
    assert "total per GPU" in capsys.readouterr().out
