"""Shared fixtures."""

import pytest

from repred._log import limited


@pytest.fixture(autouse=True)
def _fresh_log_limits():
    """Each test sees the library's log limits afresh (they are per process)."""
    limited.reset()
