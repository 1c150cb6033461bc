"""Whole jobs built on the layers below: the pipeline (``tokenweight demo``), the study,
selection, synthetic data, token inspection, and the named steps they are made of."""
