"""maskshare: circuits of SAE latents over attention-grouped token slots."""

__version__ = "0.1.0"
