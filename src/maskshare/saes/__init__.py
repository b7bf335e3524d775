"""Building the embedded SAE set: the offline training text (`corpus`, and `corpus_sampling`:
text written by the model itself, seeded and resumable), activations streamed to disk
(`activation_store`), training (`training`) and the quality table (`quality`).
Loading an SAE set into a model is not here but in `maskshare.model.sae_set`.

May import: the root's shared modules and `maskshare.model`.
"""
