"""One run's inputs and places: the run directory's paths (`layout`: `RunLayout`), the
model/SAE/dataset caches, the run directory's name and its input checks (`resources`), the
variants a config trains (`variants`: grouping x ablation) and the machine-wide core slots a
stage build holds (`compute_slot`).

May import: the root's shared modules, `maskshare.model` and `maskshare.datasets`.
"""
