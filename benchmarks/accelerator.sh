#!/usr/bin/env bash
# The prepared accelerator run (docs/gpu_run.md): one device call runs `bash benchmarks/accelerator.sh`
# and gets $OUT/accelerator.json, $OUT/accelerator.log and $OUT/machine.txt back. Extra arguments
# go to benchmarks/accelerator.py (e.g. --budget-s 300, --sections environment,table_b1).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/runs/accelerator}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# Wheels the GPU image lacks travel in .whl/ (docs/gpu_run.md lists them).
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# JAX takes GPU memory as it needs it instead of 75% up front: torch (the HF section) shares the
# device, and memory_stats()' peak then means what the program used.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
{
  date -u; uname -a; nvidia-smi || true
  python3 -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|jax-cuda|flax|optax|orbax|torch |transformers|ml.collections|numpy|absl)' || true
} > "$OUT/machine.txt" 2>&1
# The script keeps its own budget (420 s by default) and writes its JSON after every section and
# table row; the hard limit only stops a compile that overruns it.
timeout -k 10 "${ACCELERATOR_TIMEOUT_S:-470}" python3 benchmarks/accelerator.py --out "$OUT" "$@" \
  2>&1 | tee "$OUT/accelerator.log"
exit "${PIPESTATUS[0]}"
