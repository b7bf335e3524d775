"""Fixtures of the evaluation tests."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture
def tiny_run_copy(finished_tiny_run, tmp_path, monkeypatch):
    """A copy of the finished tiny run to change (its cache and one torch thread set)."""
    cfg_path, src, cache = finished_tiny_run
    monkeypatch.setenv("MASKSHARE_CACHE", str(cache))
    monkeypatch.setenv("MASKSHARE_THREADS", "1")
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst
