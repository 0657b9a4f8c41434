#!/usr/bin/env bash
# Builds and runs the host emulation of kernels/*.cu (no GPU, no CUDA
# toolkit: g++ >= 11 with C++20). Checks indexing, packing, reductions and
# bit-exactness of quantize / dequantize; not speed, not the sm_80 mma path.
set -euo pipefail
cd "$(dirname "$0")"
out="${TMPDIR:-/tmp}/quantscope-emu-test"
g++ -std=c++20 -O1 -pthread -ffp-contract=off -Wno-unknown-pragmas -o "$out" emu_test.cpp
"$out"
