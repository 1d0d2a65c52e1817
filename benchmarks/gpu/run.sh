#!/usr/bin/env bash
# The GPU run in one call (benchmarks/gpu/README.md): `bash benchmarks/gpu/run.sh [run.py arguments]`.
# Where $OUT is set (the device tool's folder of files that come back, at most 8 of them), the results
# folder is also packed into $OUT/gpu-results.tgz and the log and summary are copied there.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
if [ -n "${OUT:-}" ]; then
    "$PY" benchmarks/gpu/run.py --archive "$OUT/gpu-results.tgz" "$@" 2>&1 | tee "$OUT/run.log"
    code=${PIPESTATUS[0]}
    cp benchmarks/results/gpu-*/summary.md "$OUT/" 2>/dev/null || true
    exit "$code"
fi
exec "$PY" benchmarks/gpu/run.py "$@"
