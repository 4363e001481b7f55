#!/usr/bin/env bash
# The device check in one command, for a borrowed GPU machine (no network, no install):
#
#     OUT=/path/to/results bash benchmarks/cuda_check.sh
#
# Writes to $OUT (default ./cuda_check_out): env.txt (GPU, versions, the catalog found),
# pytest.log (tests/test_cuda.py), accuracy.md (the worst error of every comparison),
# junit.xml, bench.md (benchmarks/bench_cuda.py), status.txt (each step's exit code).
# autoloss runs from this checkout through PYTHONPATH: the catalog is read from primitives/
# next to the package, and nothing the checks import needs the search spaces or optuna, ray,
# pycocotools, shapely, rich. Every step has a timeout (SIGINT first, so pytest still
# prints its summary): the whole script ends within 6.5 minutes (45 + 240 + 75 s, 10 s of
# grace each). Exit status: 0 when every step passed.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/cuda_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 AUTOLOSS_TEST_REPORT="$OUT/accuracy.md"
export AUTOLOSS_TEST_DEVICE=${AUTOLOSS_TEST_DEVICE:-cuda}  # fail, not skip, if CUDA is broken
rm -f "$AUTOLOSS_TEST_REPORT"
: > "$OUT/status.txt"

step() {  # step NAME SECONDS LOG COMMAND...: run with a timeout, tee to LOG, note the status
    local name=$1 limit=$2 log=$3
    shift 3
    local start=$SECONDS
    timeout -s INT -k 10 "$limit" "$@" 2>&1 | tee "$log"
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - start)) s (limit $limit s)" | tee -a "$OUT/status.txt"
    return $rc
}

{
    date -u
    nvidia-smi || echo "nvidia-smi failed"
} > "$OUT/env.txt" 2>&1
step env 45 "$OUT/env-python.txt" "$PY" -c '
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| available", torch.cuda.is_available())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(), torch.cuda.get_device_capability(),
          "| float32 matmul precision", torch.get_float32_matmul_precision())
    torch.ones(1, device="cuda").sum().item()
from autoloss import catalog, zoo
print("autoloss from", __import__("autoloss").__file__, "| catalog", catalog.default_dir(),
      "|", len(zoo.names()), "zoo entries")
blocked = [m for m in ("optuna", "ray", "pycocotools", "shapely", "rich") if m in sys.modules]
print("optional packages imported:", blocked or "none")
'
cat "$OUT/env-python.txt" >> "$OUT/env.txt"

step pytest 240 "$OUT/pytest.log" "$PY" -m pytest tests/test_cuda.py -q -p no:cacheprovider \
    --tb=short -rfEs --durations=25 --junitxml="$OUT/junit.xml"
tests=$?

step bench 75 "$OUT/bench.md" "$PY" benchmarks/bench_cuda.py ${BENCH_ARGS:-}
bench=$?

echo "done: pytest exit $tests, bench exit $bench; results in $OUT" | tee -a "$OUT/status.txt"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
