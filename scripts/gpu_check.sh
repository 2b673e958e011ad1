#!/usr/bin/env bash
# The GPU check: run on a CUDA machine from a clean clone plus .carry/ (scripts/gpu_carry.sh packs it), e.g.
# through the device tool with carry [".carry"]:
#   bash scripts/gpu_check.sh            # the gpu test suite (tests/gpu) + the record, a few minutes
#   bash scripts/gpu_check.sh --scale    # and benchmarks/gpu_scale.py (8B-shaped builds vs modelopt's own flow)
# Writes $OUT/gpu_check.json (date, GPU, driver, versions, pass/fail and time per case); commit it under
# benchmarks/results/. Exit status: the test suite's.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
mkdir -p "$out"
site=/tmp/site312
[ -d "$site" ] || tar -C /tmp -xJf .carry/site312.tar.xz || { echo "gpu_check: .carry/site312.tar.xz missing: run scripts/gpu_carry.sh and carry .carry"; exit 2; }
[ -d /tmp/np1 ] || tar -C /tmp -xJf .carry/np1.tar.xz || exit 2
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TQ_TRITON_STUB_PYTHONPATH=/tmp/np1 PYTHONUNBUFFERED=1 YOLO_OFFLINE=1
# GPU_CHECK_TIMEOUT (seconds) bounds the test run alone; SIGINT lets pytest write what ran, so a short lease still
# leaves a record (the cases not reached are absent from it)
${GPU_CHECK_TIMEOUT:+timeout -s INT "$GPU_CHECK_TIMEOUT"} python3 -m pytest tests/gpu -q -p no:cacheprovider \
  --junitxml="$out/gpu_junit.xml" -o junit_family=xunit1 \
  2>&1 | tee "$out/gpu_pytest.log"
status=${PIPESTATUS[0]}
python3 scripts/gpu_record.py --junit "$out/gpu_junit.xml" --out "$out/gpu_check.json" --status "$status"
if [ "${1:-}" = "--scale" ]; then
  python3 benchmarks/gpu_scale.py --out "$out" 2>&1 | tee "$out/gpu_scale.log"
fi
exit "$status"
