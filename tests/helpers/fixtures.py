"""The one place tests get tiny tokenizers, tiny models and Trainer arguments (all offline).

Tokenizers: :func:`make_tokenizer` (an object) and :func:`save_tokenizer` (a folder). Every
kind has the same special tokens at the same ids: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2,
``<pad>`` 3 (``UNK_ID``, ``BOS_ID``, ``EOS_ID``, ``PAD_ID``; the pad id is not 0, so that a
test can tell it from a default), then

- ``"words"``: a fixed vocabulary, ``words`` (default ``w0 .. w55``, ids 4 ..), split on
  white space;
- ``"wordlevel"``: words and punctuation learned from ``texts`` (default: the test corpus);
- ``"bpe"``: byte-level BPE with ``vocab_size`` tokens learned from ``texts``; encodes any
  text.

``bos=False`` registers no BOS token (``<s>`` stays in the vocabulary); ``add_bos=True``
makes the tokenizer itself prepend ``<s>`` to every encoding.

Models: :func:`build_tiny_causal_lm` builds a fresh float32 ``<family>ForCausalLM`` in eval
mode, seeded (``seed=0`` by default) without touching the global RNG. The default shape is
vocabulary 96, hidden 32, 2 layers, 4 heads (2 key/value heads), MLP 64, up to 4096
positions; ``tokenizer=`` takes the vocabulary size and special ids from a tokenizer,
``init_std=`` redraws the matrices with a larger spread (peaked, input-dependent
predictions), other keywords go to the config. :func:`save_tiny_model` writes a complete
local model folder (weights, config, tokenizer).

Trainer: :func:`training_args` is ``TrainingArguments`` for a quiet CPU run.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from helpers.corpus import corpus_texts

SPECIALS = ("<unk>", "<s>", "</s>", "<pad>")
UNK_ID, BOS_ID, EOS_ID, PAD_ID = range(len(SPECIALS))
WORDS = tuple(f"w{i}" for i in range(56))
TOKENIZER_KINDS = ("words", "wordlevel", "bpe")

TINY_CONFIG: dict[str, Any] = {
    "vocab_size": 96,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 4096,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
    "pad_token_id": PAD_ID,
}

# family -> (config class, model class, family-specific config values)
TINY_FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 8}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 8}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 8}),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"head_dim": 8}),
    "cohere": ("CohereConfig", "CohereForCausalLM", {}),
    "granite": ("GraniteConfig", "GraniteForCausalLM", {}),
}


@functools.cache
def _tokenizer_json(kind: str, words: tuple[str, ...], texts: tuple[str, ...], size: int) -> str:
    """The serialized ``tokenizers.Tokenizer`` (cached: training one takes a while)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if kind == "words":
        vocab = {tok: i for i, tok in enumerate((*SPECIALS, *words))}
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return tok.to_str()
    if kind == "wordlevel":
        tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer: Any = trainers.WordLevelTrainer(special_tokens=list(SPECIALS), show_progress=False)
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=size,
            special_tokens=list(SPECIALS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    tok.train_from_iterator(list(texts), trainer)
    return tok.to_str()


def make_tokenizer(
    kind: str = "words",
    *,
    words: tuple[str, ...] | list[str] = WORDS,
    texts: tuple[str, ...] | list[str] | None = None,
    vocab_size: int = 300,
    bos: bool = True,
    add_bos: bool = False,
):
    """A fresh ``PreTrainedTokenizerFast`` of ``kind`` (module docstring)."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"kind must be one of {TOKENIZER_KINDS}, got {kind!r}")
    texts = tuple(texts if texts is not None else corpus_texts()) if kind != "words" else ()
    tok = Tokenizer.from_str(_tokenizer_json(kind, tuple(words), texts, vocab_size))
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", BOS_ID)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>" if bos else None,
        eos_token="</s>",
        pad_token="<pad>",
    )


def save_tokenizer(folder: Path, kind: str = "wordlevel", **options: Any) -> Path:
    """:func:`make_tokenizer` saved to ``folder`` (default kind: learned from the corpus)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    make_tokenizer(kind, **options).save_pretrained(folder)
    return folder


def build_tiny_causal_lm(
    family: str = "llama",
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    tokenizer: Any = None,
    init_std: float | None = None,
    **overrides: Any,
) -> torch.nn.Module:
    """A random ``<family>ForCausalLM`` with the tiny default shape (module docstring)."""
    import transformers

    config_name, model_name, extra = TINY_FAMILIES[family]
    settings = {**TINY_CONFIG, **extra}
    if tokenizer is not None:
        settings.update(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    config = getattr(transformers, config_name)(**{**settings, **overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, model_name)(config)
    if init_std is not None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, init_std, generator=g)
    return model.to(dtype).eval()


def save_tiny_model(folder: Path, tokenizer: Any, **model_options: Any) -> Path:
    """A local model folder: :func:`build_tiny_causal_lm` over ``tokenizer`` (an object or
    a saved folder) and the tokenizer itself."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if isinstance(tokenizer, (str, Path)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    build_tiny_causal_lm(tokenizer=tokenizer, **model_options).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def training_args(output_dir: Path, **overrides: Any):
    """``TrainingArguments`` for a quiet CPU run (no reports, saves or progress bars)."""
    from transformers import TrainingArguments

    base: dict[str, Any] = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    return TrainingArguments(**{**base, **overrides})
