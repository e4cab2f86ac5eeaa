#!/usr/bin/env bash
# Every benchmark at accelerator sizes on the machine this runs on, in one command:
#
#   bash benchmarks/gpu.sh                # on an H100/H200: under 8 minutes
#   bash benchmarks/gpu.sh --dry-run      # tiny sizes on any machine (CI runs this)
#
# Writes benchmarks/results/<device>.json (benchmarks/run_all.py: the bandit up to 2^22
# episodes per step, CartPole up to 2^16 environments, env stepping, the sequence audit,
# with each throughput row's fraction of the measured and datasheet peaks gathered under
# "fraction_of_peak"). Extra arguments go to run_all.py (--only, --out, --time-limit).
#
# A machine without network gets the packages it lacks from wheels carried with the
# checkout: `make wheels` downloads distrax and the dependencies a CUDA JAX image lacks into
# .whl/ (gitignored); this script installs them with `pip install --no-index` when distrax
# does not import. The repository itself is used from the checkout (PYTHONPATH), not
# installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# The whole run stops starting benchmarks after this many seconds and stops the running
# one, so the command ends within 8 minutes with what it measured.
TIME_LIMIT=${TIME_LIMIT:-420}

if ! "$PYTHON" -c "import distrax" 2>/dev/null; then
  if ! compgen -G ".whl/*.whl" >/dev/null; then
    echo "gpu.sh: distrax is missing and .whl/ holds no wheels: run 'make wheels' first" >&2
    exit 2
  fi
  site=${TMPDIR:-/tmp}/reinforce_jax_site
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "import jax; print('gpu.sh: JAX', jax.__version__, 'on', jax.devices())"
exec "$PYTHON" benchmarks/run_all.py --time-limit "$TIME_LIMIT" "$@"
