"""Masks over SAE latents: the masked forward pass (`masking`: `MaskedModel`, `MaskOptions`,
the ablations; `stacked`: several masks in one pass), prepared batches (`prepared`), the
per-slot means the ablation reads (`slot_stats`), training (`training`, `checkpoints`,
`warm_start`: where training starts), node attribution over (slot, SAE, latent) triples
(`attribution`) and the circuit listing (`circuit`).

May import: the root's shared modules, `maskshare.model`, and `maskshare.run` for the
`RunLayout` paths and `Variant`s that `attribution` reads.
"""
