#!/usr/bin/env bash
# Run the test suite from nothing: creates .venv, installs what it needs, runs pytest.
#   bash scripts/test.sh            (extra arguments go to pytest, e.g. -k registry)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
export TRITON_INTERPRET=1
python -m ruff check .       # lint (pyflakes + pycodestyle rules, configured in pyproject.toml)
exec python -m pytest -q -p no:cacheprovider "$@"
