"""What the tests share, imported as ``helpers.<module>`` (``tests/`` is on the path through
``tests/conftest.py``); no test module imports another test module.

- ``fixtures``: tiny tokenizers, tiny models and ``TrainingArguments``, all offline;
- ``corpus``: the test corpus in ``tests/data``;
- ``train_support`` / ``eval_support``: reference NLLs and a learnable word corpus for the
  training tests; tokenizer texts and model spread for the evaluation tests;
- ``packed``: packed (padding-free) batches and their per-document split;
- ``distributed``: launching and comparing the multi-process runs of
  ``tests/distributed/`` (``dist_train_many.py`` and ``dist_score_sharded.py`` are the
  scripts ``torchrun`` starts);
- ``safety``: the inputs of the safety tests (``tests/safety/``), made with the real
  commands, and the checks of an ``error: ...`` exit;
- ``tiers``: the test tiers, the ``slow`` threshold and the script that re-measures it.

Their own checks are in ``tests/test_fixtures.py``.
"""
