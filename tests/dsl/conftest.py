"""Fixtures for the DSL tests: `--update-golden` (registered in tests/conftest.py) rewrites the golden error
messages (tests/golden/errors/*.err).

The same can be asked with the environment variable NNSPEC_UPDATE_GOLDEN=1 (useful when pytest is started
from a folder where this conftest is not loaded before the command line is read).
"""
import os

import pytest


@pytest.fixture
def update_golden(request) -> bool:
    try:
        flag = request.config.getoption("--update-golden")
    except ValueError:  # the option was not registered (conftest loaded late)
        flag = False
    return bool(flag) or os.environ.get("NNSPEC_UPDATE_GOLDEN", "") not in ("", "0")
