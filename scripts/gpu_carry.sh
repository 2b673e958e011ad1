#!/usr/bin/env bash
# Packs what the GPU machine lacks (FACTS §7) into .carry/ for `scripts/gpu_check.sh`: the GPU box reaches no
# package registry and a call carries at most 64 MiB, so the wheels are unpacked, trimmed and xz-compressed here:
#   .carry/site312.tar.xz  nvidia-modelopt and its missing needs, tritonclient, the vision extras (pycocotools,
#                          onnx-graphsurgeon, onnxslim, lief) and nvidia-pytriton (tritonserver + python backend,
#                          the 3.12 stub only, without its bundled libpython3.13); pulp without its CBC binaries
#                          (modelopt imports pulp, nothing here solves with it)
#   .carry/np1.tar.xz      numpy 1.26 for Triton's python-backend stub alone (BYTES tensors break under numpy 2)
#   .carry/scipy1.tar.xz   SciPy 1.15.3 without its tests and the subpackages scipy.stats, modelopt and this project
#                          never import (io, signal, cluster, odr, fftpack, misc, datasets), into the same folder: the
#                          box's SciPy needs numpy 2 and modelopt imports scipy.stats
# Extension modules, libtritonserver, tritonserver and the stub lose their symbol tables (strip --strip-unneeded;
# checked: tritonserver serves a BYTES python model through the stripped 3.12 stub with numpy 1.26 + this SciPy).
# The auditwheel-bundled BLAS libraries are left alone: stripping them breaks their load ("not page-aligned").
# ICU's 29 MB data library (7.2 MB compressed) is replaced by a 9 KB one exporting the same symbol: libtritonserver
# needs libxml2, libxml2 needs ICU, but nothing a served model does converts text through ICU (checked as above).
# That brings the three archives and the work tree (~62 MB) under one call's 64 MiB.
# Run once here (it needs pip and a registry); name .carry in the device call's carry list.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.carry/' .git/info/exclude 2>/dev/null || echo '/.carry/' >> .git/info/exclude
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
platforms=(--platform manylinux_2_35_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64
           --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
get() { python3 -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version 3.12 \
          --implementation cp "${platforms[@]}" --target "$1" "${@:2}"; }
# pip install --target lays wheels out as an installer does (a wheel's .data/purelib, e.g. tritonclient's, included)
get "$work/site312" nvidia-modelopt==0.47.0 "pulp<4" omegaconf==2.4.0 antlr4-python3-runtime==4.13.2 \
    gguf==0.19.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection tritonclient==2.63.0 \
    python-rapidjson pycocotools==2.0.11 onnx-graphsurgeon==0.6.1 onnxslim==0.1.98 lief==1.0.0 \
    nvidia-pytriton==0.7.0
get "$work/np1" numpy==1.26.4
get "$work/sp/np1" scipy==1.15.3
mkdir -p .carry
rm -rf "$work/site312/pulp/solverdir" "$work/site312/nvidia_pytriton.libs"/libpython3-*
find "$work/site312/pytriton/tritonserver/python_backend_stubs" -mindepth 1 -maxdepth 1 ! -name 3.12 -exec rm -rf {} +
find "$work/np1" "$work/sp" -type d -name tests -prune -exec rm -rf {} +
rm -rf "$work/sp/np1/scipy/"{io,signal,cluster,odr,fftpack,misc,datasets}
find "$work" -name "*.pyi" -delete
find "$work" -path "*.libs" -prune -o -type f -name "*.so" -print0 | xargs -0 -n1 strip --strip-unneeded
strip --strip-unneeded "$work"/site312/nvidia_pytriton.libs/libtritonserver-*.so \
  "$work/site312/pytriton/tritonserver/bin/tritonserver" \
  "$work/site312/pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub"
icudata=$(cd "$work/site312/nvidia_pytriton.libs" && ls libicudata-*.so.*)
symbol=$(nm -D --defined-only "$work/site312/nvidia_pytriton.libs/$icudata" | awk '/icudt[0-9]+_dat/ {print $3}')
printf 'const unsigned char %s[32] __attribute__((aligned(16))) = {0};\n' "$symbol" > "$work/icudata.c"
gcc -shared -fPIC -nostdlib -Wl,-soname,"$icudata" -o "$work/site312/nvidia_pytriton.libs/$icudata" "$work/icudata.c"
# -9e in one large block each: about 5 % smaller than -6 in 24 MiB blocks, a few minutes here, once
tar -C "$work" -cf - site312 | xz -9e -T1 > .carry/site312.tar.xz
tar -C "$work" -cf - np1 | xz -9e -T1 > .carry/np1.tar.xz
tar -C "$work/sp" -cf - np1 | xz -9e -T1 > .carry/scipy1.tar.xz
ls -l .carry
