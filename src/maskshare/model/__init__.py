"""The language model and its SAE set: loading a model by name and tokenising a prompt
(`models`), naming and loading an SAE set (`sae_set`: `SAESetConfig`, `load_saes`), and
running the model over batches of prompts, written once (`activations`: padding, length
batches, final-token logits, logit differences, collecting activations at hooks).

May import: the root's shared modules (`errors`, `validation`, `domains`, `runtime`,
`artifacts`, `testing` for the `tiny` model). Nothing else of maskshare.
"""
