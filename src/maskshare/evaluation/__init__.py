"""Scoring circuits: the metrics (`metrics`: logit differences under M, M_clean, the empty
mask, a circuit and its complement; faithfulness, completeness, size), comparing variants and
choosing lambda (`comparison`: `EvalRow`, `choose_lambda`, the headline metrics) and a
finished run's circuit on new prompts (`apply`, for `maskshare eval`) and experiments on a
run's variant (`experiments.train_and_evaluate`).

May import: the root's shared modules, `maskshare.model`, `maskshare.grouping`,
`maskshare.masks` and `maskshare.run`.
"""
