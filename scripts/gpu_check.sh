#!/usr/bin/env bash
# The GPU check: run on a CUDA machine from a clean clone plus .carry/ (scripts/gpu_carry.sh packs it), e.g.
# through the device tool with carry [".carry"] (the three archives and the work tree fit one call's 64 MiB):
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
[ -d /tmp/np1/numpy ] || tar -C /tmp -xJf .carry/np1.tar.xz || exit 2
# SciPy 1.15 (numpy 1.26's) for the stub, into the same folder
[ -d /tmp/np1/scipy ] || { [ -f .carry/scipy1.tar.xz ] && tar -C /tmp -xJf .carry/scipy1.tar.xz; } || \
  echo "gpu_check: no /tmp/np1/scipy (.carry/scipy1.tar.xz): the served model cannot import modelopt in the stub"
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# modelopt compiles its CUDA extensions on first use (60 s of the 2026-12-07 run): a build carried back from an
# earlier run (.carry/torch_ext.tar.xz: same torch, CUDA and SM 9.0 on H100 and H200) is reused, ninja rebuilding
# whatever differs; a machine without one returns its fresh build as $OUT/torch_ext.tar.xz to be carried next time
export TORCH_EXTENSIONS_DIR=/tmp/torch_ext
[ -d "$TORCH_EXTENSIONS_DIR" ] || [ ! -f .carry/torch_ext.tar.xz ] || tar -C /tmp -xJf .carry/torch_ext.tar.xz
# Triton's python-backend stub ignores PYTHONPATH and takes its packages from the first python3 on PATH; it needs
# numpy<2 (BYTES tensors, FACTS §5) and SciPy 1.15 ahead of the box's numpy 2, the carried wheels and this checkout:
# a venv on the box's base python whose .pth lists them, then the torch venv's site-packages without its numpy,
# SciPy and scikit-learn (built for numpy 2; docs/llm-serving.md). TQ_TRITON_PYTHON names it.
stubenv=/tmp/stubenv
if [ ! -x "$stubenv/bin/python3" ]; then
  "$(python3 -c 'import sys; print(sys.base_prefix)')/bin/python3" -m venv --without-pip "$stubenv" || exit 2
  mkdir -p /tmp/stubsite
  for dir in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))'); do
    [ -d "$dir" ] || continue
    for p in "$dir"/*; do
      case "${p##*/}" in numpy|numpy-*|numpy.libs|scipy|scipy-*|scipy.libs|sklearn|scikit_learn*) ;;
        *) ln -sfn "$p" /tmp/stubsite/ ;; esac
    done
  done
  # addsitedir, so the .pth files in the torch venv are read as they are there
  printf '%s\n' /tmp/np1 "$site" "$PWD" "import site; site.addsitedir('/tmp/stubsite')" \
    > "$("$stubenv/bin/python3" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/tq_stub.pth"
fi
export TQ_TRITON_PYTHON=$stubenv/bin/python3 PYTHONUNBUFFERED=1 YOLO_OFFLINE=1
# what the python models import, in the stub's environment, with the real error if one fails (Triton logs one line)
env -u PYTHONPATH "$TQ_TRITON_PYTHON" -c 'import numpy, torch, transformers; from transformers import AutoTokenizer
import modelopt.torch.quantization, triton_backend, llm_quant.runtime
print("stub env:", numpy.__version__, torch.__version__, transformers.__version__)' \
  > "$out/stub_env.log" 2>&1; tail -n 30 "$out/stub_env.log"
# GPU_CHECK_K selects cases (pytest -k) for a quick look; the committed record is from a run of them all.
# GPU_CHECK_TIMEOUT (seconds) bounds the test run alone; SIGINT lets pytest write what ran, so a short lease still
# leaves a record (the cases not reached are absent from it)
# serve and vision first: they are the slowest to start, and a run cut short (2026-12-07: 44 cases in 370 s) should
# lose the cases that have run before, not the ones that never have
files=(tests/gpu/test_serve.py tests/gpu/test_vision.py)
for f in tests/gpu/test_*.py; do case " ${files[*]} " in *" $f "*) ;; *) files+=("$f") ;; esac; done
${GPU_CHECK_TIMEOUT:+timeout -s INT "$GPU_CHECK_TIMEOUT"} python3 -m pytest "${files[@]}" -q -p no:cacheprovider ${GPU_CHECK_K:+-k "$GPU_CHECK_K"} \
  --junitxml="$out/gpu_junit.xml" -o junit_family=xunit1 \
  2>&1 | tee "$out/gpu_pytest.log"
status=${PIPESTATUS[0]}
python3 scripts/gpu_record.py --junit "$out/gpu_junit.xml" --out "$out/gpu_check.json" --status "$status"
if [ "${1:-}" = "--scale" ]; then
  python3 benchmarks/gpu_scale.py --out "$out" 2>&1 | tee "$out/gpu_scale.log"
fi
if [ -n "${OUT:-}" ] && [ ! -f .carry/torch_ext.tar.xz ] && [ -d "$TORCH_EXTENSIONS_DIR" ]; then
  tar -C /tmp -cf - torch_ext | xz -6 -T0 > "$OUT/torch_ext.tar.xz"
fi
exit "$status"
