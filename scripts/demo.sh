#!/usr/bin/env bash
# The main job on a built-in example, from nothing: check, summarise and compile a spec to PyTorch,
# then run one training step of the compiled module on real data (scikit-learn's digits, offline).
#   bash scripts/demo.sh [SPEC]      (default: the built-in mnist_cnn... on 8x8 digits: digits_cnn)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
SPEC="${1:-digits_cnn}"
OUT="$ROOT/build/demo"
mkdir -p "$OUT"
set -x
nnspec check "$SPEC"
nnspec summary "$SPEC" --batch 64
nnspec compile "$SPEC" -o "$OUT"
python "$ROOT/examples/train_step.py" "$SPEC"
