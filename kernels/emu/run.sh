#!/usr/bin/env bash
# Builds and runs the host emulation of kernels/*.cu (no GPU, no CUDA
# toolkit: g++ >= 11 with C++20). Checks indexing, packing, reductions and
# bit-exactness of quantize / dequantize, and the tensor-core GEMM through an
# emulated mma.sync; not speed. Three builds, each run:
#   sm_80   the paths an A100 / H100 runs (tensor-core GEMM), every part;
#   sm_75   the SIMT GEMM fallback of T4-class GPUs (the matmul part);
#   asan    sm_80 under AddressSanitizer + UndefinedBehaviorSanitizer (any
#           report fails the run), every part. -O0: the sanitized build of
#           -O1 takes 3x as long to compile (16 s vs 5 s) to save 3 s of run.
# `run.sh --quick` runs fewer shapes (for CI); other arguments go to every
# binary (e.g. --only=quantize,matmul,assign,ops). EMU_BUILDS="sm80 sm75"
# picks builds. Without g++ it skips with one line, except under CI=true,
# where that is a failure.
set -euo pipefail
cd "$(dirname "$0")"

source ./need_gxx.sh
need_gxx "the CUDA kernel emulation (kernels/emu)"

builds="${EMU_BUILDS:-sm80 sm75 asan}"
# Fresh binaries per run: two checkouts running the emulation at once must
# not overwrite each other's executables.
dir="$(mktemp -d "${TMPDIR:-/tmp}/quantscope-emu.XXXXXX")"
trap 'rm -rf "$dir"' EXIT

common=(-std=c++20 -pthread -ffp-contract=off -Wall -Wno-unknown-pragmas)
flags_for() {
  case "$1" in
    sm80) echo "-O1" ;;
    sm75) echo "-O1 -DQUANTSCOPE_EMU_ARCH=750" ;;
    asan) echo "-O0 -g -fsanitize=address,undefined -fno-sanitize-recover=all" ;;
    *) echo "unknown emulator build '$1' (sm80, sm75, asan)" >&2; return 1 ;;
  esac
}

# Builds in parallel (the sanitizer build is the slow one).
pids=()
for b in $builds; do
  f="$(flags_for "$b")"
  # shellcheck disable=SC2086
  g++ "${common[@]}" $f -o "$dir/emu-$b" emu_test.cpp >"$dir/build-$b.log" 2>&1 &
  pids+=("$!")
done
i=0
for b in $builds; do
  if ! wait "${pids[$i]}"; then
    cat "$dir/build-$b.log" >&2
    echo "error: the $b emulator build failed" >&2
    exit 1
  fi
  i=$((i + 1))
done

for b in $builds; do
  args=("$@")
  # The sm_75 build differs only in the GEMM path.
  [ "$b" = sm75 ] && args+=(--only=matmul)
  echo "== kernels/emu: $b build"
  ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=86" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    "$dir/emu-$b" "${args[@]}"
done
