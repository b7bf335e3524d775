"""Masks over SAE latents: the masked forward pass (`masking`: `MaskedModel`, `MaskOptions`,
the ablations; `stacked`: several masks in one pass), prepared batches (`prepared`), the
per-slot means the ablation reads (`slot_stats`), training (`training`, `checkpoints`,
`warm_start`: where training starts), node attribution over (slot, SAE, latent) triples
(`attribution`), the circuit listing (`circuit`), the ablations as classes (`ablations`) and
a run's variant ready to train or score (`variant`: `prepare_variant`, `load_slots`).

May import: the root's shared modules, `maskshare.model`, `maskshare.grouping` (a run's
fitted grouping) and `maskshare.run` (`RunLayout` paths, `Variant`s, the run's caches).
"""
