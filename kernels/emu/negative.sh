#!/usr/bin/env bash
# The negative run: plants known bugs, one per copy of kernels/, and requires
# the emulation (emu_test.cpp) to FAIL on each with the expected message. A
# planted bug that passes, or fails some other way (a build error, a crash
# without the message), fails this script: a check that cannot see the bug it
# is there for is a broken check. The real kernels/ is never touched.
#
#   nibble     quantize.cu packs q4 codes with the nibbles of each pair
#              swapped: the quantize check (bit for bit against the packer
#              rules) must fail.
#   tile       gemm.cu's tensor-core path steps batch tiles by 33 rows
#              instead of 32: batch row 32 is never computed; only a GEMM
#              with batch > 32 (two tiles) can see it.
#   simt       gemm.cu's SIMT path drops the q4 zero point: only the sm_75
#              build runs that path for q4.
#   codebook   common.cuh loads the lut4 codebook into shared memory in
#              block 0 only, as if shared memory were kept between blocks:
#              every other block reads whatever its shared memory held
#              (the emulator fills it with garbage before each block).
#   block      sparse.cu's scale_input rounds W8A8 activations per block of
#              16 columns instead of 32: close to the right answer (a
#              finer rounding), so only the W8A8 matmul check against its
#              f64 definition sees it.
#   overread   sparse.cu's scale_input loads act_scale[c] before checking
#              that c is a real column (not padding); the value is never
#              used, so only AddressSanitizer sees the read past the end
#              (act_scale[cols] is in the buffer's redzone, so it always
#              does; a read further on may be reported as use-after-free).
# Without g++: one skip line, or a failure under CI=true (as run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

source ./emu/need_gxx.sh
need_gxx "the emulator's negative run (kernels/emu/negative.sh)"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/quantscope-emu-neg.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# -O0: these binaries run a few shapes once, and build in half the time.
common=(-std=c++20 -O0 -pthread -ffp-contract=off -Wno-unknown-pragmas)
asan=(-g -fsanitize=address,undefined -fno-sanitize-recover=all)

# plant NAME FILE OLD NEW: a copy of kernels/ in $tmp/NAME with the first
# OLD in FILE replaced by NEW (the text must be there: a planted bug that
# no longer applies is an error, not a pass).
plant() {
  local name="$1" file="$2" old="$3" new="$4"
  mkdir -p "$tmp/$name/emu"
  cp ./*.cu ./*.cuh "$tmp/$name/"
  cp emu/cuda_emu.h emu/emu_test.cpp "$tmp/$name/emu/"
  OLD="$old" NEW="$new" python3 - "$tmp/$name/$file" <<'EOF'
import os, sys
path = sys.argv[1]
text = open(path).read()
old, new = os.environ["OLD"], os.environ["NEW"]
if old not in text:
    sys.exit(f"negative.sh: the text to mutate is not in {path}: {old!r}")
open(path, "w").write(text.replace(old, new, 1))
EOF
}

# Planted bugs: name, file, original text, planted text.
plant nibble quantize.cu 'word |= q << (4u * j);' 'word |= q << (4u * (j ^ 1u));'
# gemm_mma's tile origin (gemm_simt's has the same first line, then `tx`).
plant tile gemm.cu 'const u32 n0 = blockIdx.x * GM_BN, m0 = blockIdx.y * GM_BM;
    const u32 wm' 'const u32 n0 = blockIdx.x * GM_BN, m0 = blockIdx.y * (GM_BM + 1);
    const u32 wm'
plant simt gemm.cu 'out[j] = FMT == FMT_Q4 ? g.scale * ((float)q - g.zero)' 'out[j] = FMT == FMT_Q4 ? g.scale * (float)q'
plant codebook common.cuh 'if (threadIdx.x < 16) cb_s[threadIdx.x]' 'if (threadIdx.x < 16 && blockIdx.x == 0) cb_s[threadIdx.x]'
plant overread sparse.cu 'const u32 c = (u32)(i % xs);
        if (c >= p.cols) {' 'const u32 c = (u32)(i % xs);
        const float a = act_scale[c];
        (void)a;
        if (c >= p.cols) {'
plant block sparse.cu 'const u32 b0 = c & ~31u, b1 = min(b0 + 32u, p.cols);' \
  'const u32 b0 = c & ~15u, b1 = min(b0 + 16u, p.cols);'

# name: build flags | emulator arguments | expected message (grep -E).
declare -A flags=(
  [nibble]=""
  [tile]=""
  [simt]="-DQUANTSCOPE_EMU_ARCH=750"
  [codebook]=""
  [overread]="${asan[*]}"
  [block]=""
)
declare -A args=(
  [nibble]="--quick --only=quantize"
  [tile]="--quick --only=matmul --formats=f16,q4"
  [simt]="--quick --only=matmul --formats=q4"
  [codebook]="--quick --only=matmul --formats=lut4"
  [overread]="--quick --only=matmul --formats=q8"
  [block]="--quick --only=matmul --formats=q8"
)
declare -A expect=(
  [nibble]='FAIL .*q4 code r[0-9]+ c[0-9]+'
  [tile]='FAIL .*gemm_(f16|q4) 130x70 g[0-9]+ batch 40 .*NMSE -?(nan|inf)'
  [simt]='FAIL .*gemm_q4 [0-9]+x[0-9]+ g[0-9]+ batch [0-9]+ .*NMSE'
  [codebook]='FAIL .*(dequantize|gemv|gemm)_lut4'
  [overread]='ERROR: AddressSanitizer: heap-(buffer-overflow|use-after-free)'
  [block]='FAIL .*(gemv|gemm)_q8 [0-9]+x[0-9]+ g[0-9]+ batch [0-9]+ flags [4-7]: NMSE'
)
names=(nibble tile simt codebook overread block)

pids=()
for n in "${names[@]}"; do
  # shellcheck disable=SC2086
  g++ "${common[@]}" ${flags[$n]} -o "$tmp/$n/emu-test" "$tmp/$n/emu/emu_test.cpp" >"$tmp/$n/build.log" 2>&1 &
  pids+=("$!")
done
i=0
for n in "${names[@]}"; do
  if ! wait "${pids[$i]}"; then
    cat "$tmp/$n/build.log" >&2
    echo "error: the '$n' mutant does not build (fix the planted text in negative.sh)" >&2
    exit 1
  fi
  i=$((i + 1))
done

# The mutants run side by side; each result is read from its log.
pids=()
for n in "${names[@]}"; do
  # shellcheck disable=SC2086
  (
    rc=0
    ASAN_OPTIONS="detect_leaks=0" timeout 300 "$tmp/$n/emu-test" ${args[$n]} >"$tmp/$n/run.log" 2>&1 || rc=$?
    echo "$rc" >"$tmp/$n/rc"
  ) &
  pids+=("$!")
done
wait "${pids[@]}"
missed=0
for n in "${names[@]}"; do
  rc="$(cat "$tmp/$n/rc")"
  if [ "$rc" -ne 0 ] && grep -Eq "${expect[$n]}" "$tmp/$n/run.log"; then
    echo "negative run: '$n' caught (exit $rc): $(grep -Em1 "${expect[$n]}" "$tmp/$n/run.log" | sed "s|$tmp/$n/||")"
  else
    echo "negative run: '$n' NOT caught as expected (exit $rc, wanted /${expect[$n]}/); its output:" >&2
    tail -n 20 "$tmp/$n/run.log" >&2
    missed=$((missed + 1))
  fi
done
if [ "$missed" -ne 0 ]; then
  echo "error: $missed planted bug(s) passed the emulation" >&2
  exit 1
fi
echo "negative run: all ${#names[@]} planted bugs caught"
