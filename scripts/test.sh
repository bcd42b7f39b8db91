#!/usr/bin/env bash
# Run the test suite from nothing: creates .venv, installs what it needs, runs pytest.
#   bash scripts/test.sh            (extra arguments go to pytest, e.g. -k registry)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
export TRITON_INTERPRET=1
python -m ruff check .       # lint (pyflakes + pycodestyle rules, configured in pyproject.toml)
# types of nnspec.compiler (mypy, configured in pyproject.toml). The checkout is the package itself: mypy finds
# `nnspec` through a link to it (mypy_path); paths are shown relative to the checkout. Fails on any type error.
mkdir -p .mypy_cache/path && ln -sfn ../.. .mypy_cache/path/nnspec
python -m mypy | sed 's#^\.mypy_cache/path/nnspec/##'
exec python -m pytest -q -p no:cacheprovider "$@"
