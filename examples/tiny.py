"""Stand-ins for your model, tokenizer and texts, so that every example runs anywhere in
seconds and downloads nothing: a random 2-layer Llama built from a config, a word-level
tokenizer over 56 words, and texts in which spans of words recur (a little that long
context can predict).

With a real model, replace them::

    tokenizer = AutoTokenizer.from_pretrained("HuggingFaceTB/SmolLM2-135M")
    model = AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M")
"""

from __future__ import annotations

import random

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

WORDS = [f"w{i}" for i in range(56)]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level: ``<unk>`` 0, ``<s>`` 1 (BOS, put before every text, as Llama's
    tokenizers do), ``</s>`` 2, ``<pad>`` 3, then the words."""
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>", "<pad>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )


def tiny_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    """A random float32 Llama (hidden 32, 2 layers, 512 positions) over ``tokenizer``."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def tiny_texts(count: int, words: int = 64, seed: int = 0) -> list[str]:
    """``count`` texts of ``words`` words each; every text repeats an 8-word span of its
    first half in its second half."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        text = [rng.choice(WORDS) for _ in range(words)]
        start, to = rng.randrange(0, words // 2 - 8), rng.randrange(words // 2, words - 8)
        text[to : to + 8] = text[start : start + 8]
        texts.append(" ".join(text))
    return texts
