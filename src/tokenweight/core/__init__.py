"""The method as tensor functions: weighting (scores to weights), scorers (short-context
NLL), losses (memory-flat per-token NLL) and packed-batch bookkeeping. Imports only
:mod:`tokenweight.infra`."""
