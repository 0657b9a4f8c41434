#!/usr/bin/env bash
# Builds and runs the host emulation of kernels/*.cu (no GPU, no CUDA
# toolkit: g++ >= 11 with C++20). Checks indexing, packing, reductions and
# bit-exactness of quantize / dequantize, and the tensor-core GEMM through an
# emulated mma.sync; not speed. `run.sh --quick` runs fewer shapes (for CI).
set -euo pipefail
cd "$(dirname "$0")"
# A fresh binary per run: two checkouts running the emulation at once must
# not overwrite each other's executable.
out="$(mktemp "${TMPDIR:-/tmp}/quantscope-emu-test.XXXXXX")"
trap 'rm -f "$out"' EXIT
g++ -std=c++20 -O1 -pthread -ffp-contract=off -Wno-unknown-pragmas -o "$out" emu_test.cpp
"$out" "$@"
