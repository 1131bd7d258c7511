#!/usr/bin/env bash
# One prepared GPU check for ovmap on a single H100/H200 (< 8 minutes): the CUDA-parametrised tests, map fusion to
# 1 M voxels at D = 1152, RADSeg-B (random weights, real size) in fp32 / bf16 / torch.compile, end-to-end mapping,
# and the evaluator on the GPU. Each step has its own timeout; a failing step is reported and the rest still run.
# Prints one table and writes JSON (summary.json) and logs under $OUT (default outputs/device_check).
#
#   scripts/device_check.sh                          # on a GPU machine, from the repository root
#   DEVICE=cpu QUICK=1 scripts/device_check.sh       # a small smoke run of the script itself on a CPU
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-outputs/device_check}"
device="${DEVICE:-cuda}"
py="${PYTHON:-python}"
quick=()
[[ "${QUICK:-0}" == "1" ]] && quick=(--quick --no-compile)
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"; \
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"; \
} | tee "$out/device.txt"

step() {  # step <name> <seconds> <command...>
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "step $name: exit $rc in $((SECONDS - t0)) s (log: $out/$name.log)"
  [[ $rc -ne 0 ]] && tail -n 5 "$out/$name.log" | sed 's/^/    /'
  return 0
}

if [[ "$device" == cuda* ]]; then
  step pytest 180 "$py" -m pytest -q -rs -k cuda -p no:cacheprovider tests
  summary=$(grep -E "[0-9]+ (passed|failed)" "$out/pytest.log" | tail -n 1)
  printf '{"summary": "%s"}\n' "${summary:-no summary}" >"$out/pytest.json"
fi
step fusion 120 "$py" scripts/device_check.py fusion --device "$device" --dir "$out" "${quick[@]}"
step radseg 180 "$py" scripts/device_check.py radseg --device "$device" --dir "$out" "${quick[@]}"
step online 90 "$py" scripts/device_check.py online --device "$device" --dir "$out" "${quick[@]}"
step eval 60 "$py" scripts/device_check.py eval --device "$device" --dir "$out" "${quick[@]}"
"$py" scripts/device_check.py table --dir "$out"
