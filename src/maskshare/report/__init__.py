"""What a person reads: report.html from a run directory's files alone (`page`:
`write_report`, `write_comparison`; `data`: the tables it reads; `circuit`, `svg`: the
circuit view and the plots), slot names (`slot_names`), the inspection page of a fitted
grouping (`groups_view`) and headless-Chromium screenshots of the pages (`browser`).

May import: the root's shared modules, `maskshare.grouping`, `maskshare.evaluation` and
`maskshare.run` (for paths).
"""
