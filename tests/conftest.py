"""Shared fixtures: tiny seeded models/SAEs for unit tests; the real model for marked tests."""

from __future__ import annotations

import os

import pytest

# never reach for a model hub from the tests; keep Prefect quiet and local
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# one torch thread per xdist worker (scripts/test.sh starts one worker per core): the
# workers' own torch work, and every run they start in-process, would otherwise take every
# core each and oversubscribe them (measured 9x slower on a busy 2-core machine, see
# maskshare.runtime). Subprocess runs get MASKSHARE_THREADS=1 from tests/run_helpers.py.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("MASKSHARE_THREADS", "1")
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny():
    """(model, saes): a 2-layer random HookedSAETransformer with an SAE at each resid_post."""
    from maskshare.testing import tiny_model, tiny_saes

    model = tiny_model(seed=0)
    return model, tiny_saes(model, seed=0)


@pytest.fixture(scope="session")
def real_model():
    """The embedded SmolLM2-135M (loaded once per session)."""
    from maskshare.model.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """Point maskshare's cache at a fresh temp folder."""
    monkeypatch.setenv("MASKSHARE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def dirs(tmp_path, tmp_cache, monkeypatch):
    """(data dir, cache dir): fresh, empty, and maskshare's for this test."""
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("MASKSHARE_DATA", str(data))
    return data, tmp_cache


@pytest.fixture(scope="session")
def finished_tiny_run(tmp_path_factory):
    """(config path, run dir, cache dir) of one finished tiny end-to-end run (~20 s, once per
    session). Shared: tests must not modify it; copy it to change anything."""
    from maskshare.config import load_config
    from maskshare.stages.pipeline import run_pipeline
    from maskshare.testing import write_tiny_run_setup

    root = tmp_path_factory.mktemp("tiny-run")
    mp = pytest.MonkeyPatch()
    mp.setenv("MASKSHARE_CACHE", str(root / "cache"))
    mp.setenv("MASKSHARE_THREADS", "1")
    try:
        cfg_path = write_tiny_run_setup(root)
        run = run_pipeline(load_config(cfg_path))
    finally:
        mp.undo()
    return cfg_path, run, root / "cache"


def pytest_configure(config):
    config.addinivalue_line("markers", "spread: the parts of one long test, each on its own "
                            "xdist worker where there are several (see below)")


def pytest_collection_modifyitems(config, items):
    """With xdist's worksteal scheduling (scripts/test.sh) each worker first gets one
    contiguous block of the collection (the first N // n items, then half the rest ...) and
    idle workers steal only from the ends of the others' queues: the parts of a test split
    for balance (marked `spread`, e.g. the chaos test's chains) would sit side by side in
    one block and run one after the other. Each goes to the start of its own block instead;
    the order of everything else is kept, so module fixtures are still set up once."""
    n = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    spread = [it for it in items if it.get_closest_marker("spread")]
    if n < 2 or not spread:
        return
    rest = [it for it in items if not it.get_closest_marker("spread")]
    out, left = [], len(items)
    for k in range(n):
        size = left // (n - k)  # the block xdist hands worker k (WorkStealingScheduling)
        head = spread[k::n]
        take = max(0, size - len(head))
        out += head + rest[:take]
        rest = rest[take:]
        left -= size
    items[:] = out + rest
