"""Published checkpoint formats -> this package's models: one module per source format, and a safe loader for
pickled state dicts (:mod:`hf_seqmodels.conversion.safe_pickle`)."""
