"""A controlled comparison of weighting schemes (``tokenweight study CONFIG``).

From one start model and one dataset, every listed run (a scheme with its scorer, on all
or on selected data) is trained for the same steps with each seed (the same data order
per seed), and every trained model is evaluated on the same held-out sequences. The report
gives *paired* differences against the baseline run (same targets, same seeds) with
bootstrap intervals (:mod:`tokenweight.evaluation.paired`), for the NLL by position bucket
(inside and beyond the original context ``window``), for LongPPL's key tokens (chosen
once, by the start model as a fixed evaluator) and, on synthetic data, for the targets
that depend on context at each planted distance.

Steps reuse the pipeline's bookkeeping: each step's folder holds a fingerprint of its
settings, so a rerun reuses finished steps and continues an interrupted training run.

One module per job:

- :mod:`~tokenweight.workflows.study.config`: the settings (:class:`StudyConfig`, one
  :class:`RunSpec` per run) and the training config of one run (``train_config``);
- :mod:`~tokenweight.workflows.study.plan`: the checks before any work and the plan;
- :mod:`~tokenweight.workflows.study.run`: :func:`run_study`, the cached steps in order;
- :mod:`~tokenweight.workflows.study.pretrain`: the tiny start model, built and pretrained;
- :mod:`~tokenweight.workflows.study.evaluate`: per-target NLL (and probe answers) of
  every model on the held-out sequences, as arrays;
- :mod:`~tokenweight.workflows.study.stats`: the metrics' target masks and the paired
  differences (``study.json``);
- :mod:`~tokenweight.workflows.study.verdict`: what they say (families, Holm's
  correction, the bottom line, the context warning);
- :mod:`~tokenweight.workflows.study.report`: ``study.md`` and ``study.png``;
- :mod:`~tokenweight.workflows.study.cost`: the calibrated estimate of ``--dry-run``.
"""

from __future__ import annotations

from tokenweight.workflows.study.config import RunSpec, StudyConfig, load_study_config
from tokenweight.workflows.study.evaluate import EVAL_MARKER
from tokenweight.workflows.study.plan import CheckedStudy, check_study, plan_text
from tokenweight.workflows.study.report import write_study_report
from tokenweight.workflows.study.run import run_study
from tokenweight.workflows.study.stats import STUDY_FORMAT, study_results

__all__ = [
    "EVAL_MARKER",
    "STUDY_FORMAT",
    "CheckedStudy",
    "RunSpec",
    "StudyConfig",
    "check_study",
    "load_study_config",
    "plan_text",
    "run_study",
    "study_results",
    "write_study_report",
]
