"""The stages of a run, one module each (`dataset`, `groups`, `stats`, `attribution`,
`masks`, `evaluate`), and `plan`: their order, keys and the runner that skips complete
outputs.

A stage's `build(run, ...)` reads its inputs from the run directory, writes its outputs
atomically there (a manifest-checked directory, see `maskshare.artifacts`) and knows
nothing of caching or of Prefect: `plan.execute` (in process) and `flows/` (Prefect) run
the same list of `StageCall`s.
"""
