"""Test configuration: make `nnspec` importable from a plain checkout (the repo root is the package)."""
import importlib.util
import sys
from pathlib import Path

import pytest

if importlib.util.find_spec("nnspec") is None:  # not installed: link the checkout in as `nnspec`
    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("nnspec", root / "__init__.py", submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["nnspec"] = module
    spec.loader.exec_module(module)


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite the golden files (error messages, DOT renders) from the current output")


@pytest.fixture(scope="module")
def one_thread():
    """Small models, many small ops: one intra-op thread is faster than several (no synchronisation per op,
    no spinning when other processes share the cores). Test modules ask for it with pytestmark."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
