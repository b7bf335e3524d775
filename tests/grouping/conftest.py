"""Fixtures shared by the grouping tests: the tiny model and its item tables."""

from __future__ import annotations

import pytest
from grouping_items import make_items, templated_items


@pytest.fixture(scope="module")
def model(tiny):
    return tiny[0]


@pytest.fixture(scope="module")
def items(model):
    return make_items(model)


@pytest.fixture(scope="module")
def templated(model):
    return templated_items(model)
