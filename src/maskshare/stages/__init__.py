"""The stages of a run, one module each (`dataset`, `groups`, `stats`, `attribution`,
`masks`, `evaluate`), `plan`: their order, keys and the runner that skips complete
outputs, and `pipeline`: `run_pipeline(cfg)`, the whole plan in this process.

A stage's `build(run, ...)` reads its inputs from the run directory, writes its outputs
atomically there (a manifest-checked directory, see `maskshare.artifacts`) and knows
nothing of caching or of Prefect: `plan.execute` (in process) and `flows/` (Prefect) run
the same list of `StageCall`s.

May import: every part of the library (it is the top of it); only `maskshare.commands` and
`flows/` import it.
"""
