"""Fixtures for the averaging tests (helpers live in averaging_fixtures.py)."""

import pytest
from averaging_fixtures import all_rules


@pytest.fixture(params=all_rules(), ids=lambda r: r.name)
def rule(request):
    return request.param
