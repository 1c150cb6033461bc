"""Extending tokenweight: a scheme preset and a scorer kind of your own, registered in the
tables every command reads (no other file changes).

Run: ``python examples/extending.py``.
"""

# --8<-- [start:example]
import torch

from tokenweight import Scheme, compute_weights
from tokenweight.core.scorer_kinds import ScorerInputs, ScorerKind, register_scorer_kind
from tokenweight.core.weighting import Preset, register_preset
from tokenweight.training.config import Config

# A preset "capped:GAMMA": min(|l - s|, gamma), L1-normalized.
register_preset(
    Preset(
        "capped",
        lambda gamma: Scheme("difference", ("absolute",), truncation=gamma, normalization="l1"),
        ("gamma",),
        example="capped:2",
    )
)


# A scorer kind "half": s = l / 2 (no model, no window, nothing stored).
def build_half(inputs: ScorerInputs):
    return lambda batch, long_nll, model=None: long_nll.detach() / 2


register_scorer_kind(ScorerKind("half", "half the long-context NLL (an example)", build_half))

config = Config.from_dict(
    {
        "model": {"source": "smollm2"},
        "data": {"path": "data/prepared"},
        "scheme": "capped:2",
        "scorer": {"kind": "half"},
    }
)
scorer = config.used_scorer.build(ScorerInputs())
long_nll = torch.tensor([[0.5, 3.0, 1.2, 6.0]])  # (batch, targets), nats
weights = compute_weights(long_nll, scorer({}, long_nll), config.scheme)
print(config.scheme, config.scorer_kind, [round(w, 4) for w in weights[0].tolist()])
# --8<-- [end:example]
