"""Thin Prefect flows over the maskshare library (imports run flows -> maskshare only)."""
