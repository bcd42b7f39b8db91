#!/usr/bin/env bash
# Create .venv with nnspec and everything it needs (idempotent). Sourced by demo.sh and test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NNSPEC_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

# graphviz's `dot` renders the diagrams; without it nnspec still writes .dot files
if ! command -v dot >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
        echo "[setup] installing graphviz (apt-get)" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz) >/dev/null 2>&1 \
            || echo "[setup] could not install graphviz; diagrams will be written as .dot only" >&2
    else
        echo "[setup] graphviz's dot not found: install it (apt-get install graphviz) for SVG/PNG diagrams" >&2
    fi
fi

stamp="$VENV/.nnspec-installed"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV" >&2
    "$PY" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    echo "[setup] installing nnspec and its dependencies into $VENV" >&2
    links=()
    # the CPU build of torch lies on local disk on our machines; elsewhere pip takes it from the registry
    [ -d /opt/wheels ] && links=(--find-links /opt/wheels)
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${links[@]}" -e "$ROOT[test,triton]"
    touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
