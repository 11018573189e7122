#!/usr/bin/env bash
# One command on a fresh GPU machine: installs avflow_jax with the CUDA build of JAX into
# .venv-gpu, then measures issue 13's figures (benchmarks/gpu_check.py) in at most 8 minutes,
# writing OUT/gpu_check.json and OUT/gpu_check.md (a table for BENCHMARKS.md).
#
#   benchmarks/gpu_check.sh [--out DIR] [--no-install]     # on the GPU machine
#   benchmarks/gpu_check.sh --dry-run [--out DIR]          # the same path on this CPU, tiny config
#
# OUT defaults to $OUT (the device tool's output folder) or ./gpu_check_out.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check_out}"
dry=""
install=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry="--dry-run"; install=0 ;;
    --no-install) install=0 ;;
    --out) out="$2"; shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --dry-run, --out DIR, --no-install)" >&2
       exit 2 ;;
  esac
  shift
done
if [[ -n "$dry" ]]; then
  export JAX_PLATFORMS=cpu
  python=${PYTHON:-python3}
elif [[ $install == 1 ]]; then
  t0=$SECONDS
  python3 -m venv .venv-gpu
  .venv-gpu/bin/python -m pip install -q --upgrade pip
  .venv-gpu/bin/python -m pip install -q -e ".[gpu,demo]"
  echo "gpu_check: installed in $((SECONDS - t0)) s" >&2
  python=.venv-gpu/bin/python
else
  python=${PYTHON:-python3}
fi
"$python" -c "import jax; print('gpu_check: jax', jax.__version__, jax.devices())" >&2
# The measurement itself: 8 minutes at most; stages stop starting after 420 s.
timeout 480 "$python" benchmarks/gpu_check.py --out "$out" $dry --budget-s 420
