#!/usr/bin/env bash
# Generates the Python stubs (with type stubs) for protos/ into OUT (default: the
# repository root, where they are committed as the `webhooks.v1` package).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root}
python=${PYTHON:-$root/.venv/bin/python}
bin=$(dirname "$python")
mkdir -p "$out/webhooks/v1"
# The mypy plugins are found on PATH, next to the interpreter.
PATH="$bin:$PATH" "$python" -m grpc_tools.protoc \
  -I "$root/protos" \
  --python_out="$out" \
  --grpc_python_out="$out" \
  --mypy_out="$out" \
  --mypy_grpc_out="$out" \
  "$root"/protos/webhooks/v1/*.proto
touch "$out/webhooks/__init__.py" "$out/webhooks/v1/__init__.py"
