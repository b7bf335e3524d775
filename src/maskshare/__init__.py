"""maskshare: circuits of SAE latents over attention-grouped token slots.

From Python: `run = maskshare.open_run(RUN_DIR)` (maskshare.run.handle; docs/api.md).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("open_run", "Run"):  # lazily: `import maskshare` stays light
        from maskshare.run import handle

        return getattr(handle, name)
    raise AttributeError(f"module 'maskshare' has no attribute {name!r}")


__all__ = ["Run", "__version__", "open_run"]
