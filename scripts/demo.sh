#!/usr/bin/env bash
# The main job on a built-in example, from nothing: check, summarise, compile and draw the digits CNN, then train
# it with the declarative runtime (`nnspec train examples/digits_cnn.yaml`) on scikit-learn's 8x8 handwritten
# digits, offline: progress, checkpoints, CSV and TensorBoard logs, curves.png, and the test accuracy.
# About a minute on a 2-core CPU once the environment is installed.
#   bash scripts/demo.sh [CONFIG]      (default: examples/digits_cnn.yaml; its model.spec is checked and drawn)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
CONFIG="${1:-$ROOT/examples/digits_cnn.yaml}"
OUT="$ROOT/build/demo"
mkdir -p "$OUT"
# the spec the config trains (a path relative to the config, or a built-in name)
SPEC="$(python - "$CONFIG" <<'EOF'
import sys
from nnspec.runtime.config import load_config
cfg = load_config(sys.argv[1])
path = cfg.resolve_path(cfg["model"]["spec"])
print(path if path.exists() else cfg["model"]["spec"])
EOF
)"
set -x
nnspec check "$SPEC"
nnspec summary "$SPEC" --batch 64
nnspec compile "$SPEC" -o "$OUT"
nnspec render "$SPEC" -o "$OUT"
nnspec train "$CONFIG" --out "$OUT/train" --overwrite
set +x
echo "demo outputs in $OUT: the compiled module, the forward/backward graphs, and train/ (checkpoints/, steps.csv,"
echo "epochs.csv, tb/, curves.png, results.json)"
