#!/usr/bin/env bash
# The GPU check: proves the CUDA and wgpu-Vulkan paths on a real NVIDIA GPU in
# one call of the device tool, with the kit that build.sh made.
#
#   bash scripts/device-check/run.sh            # on the device machine
#   bash scripts/device-check/run.sh --local    # the dry run here (CI)
#
# Options: --kit DIR (default device-kit), --budget SECONDS (default 480 on
# the device, 110 locally), --out DIR (default $OUT, else
# target/device-check). QUANTSCOPE_CUDA_LIBS=dir:dir is searched first for
# libnvrtc / libcublas.
#
# Steps, in order, each time-boxed (`timeout`); a failing step does not stop
# the next, and a step that no longer fits the budget is skipped with a line:
#   env        driver, NVRTC, cuBLAS and Vulkan versions and paths (first: an
#              NVRTC newer than the driver makes PTX the driver refuses)
#   devices    `quantscope devices`
#   tests      cuda_compile (NVRTC required), cuda_unavailable (CUDA
#              required), cross_backend (CUDA and wgpu required,
#              CUDA_LAUNCH_BLOCKING=1, one test thread), wgpu_backend
#   profile    per format and batch on CUDA and wgpu, each beside the copy
#              bandwidth and (CUDA) cuBLAS's f16 GEMM at the same shape
#   vector     `vector --size large --bits 3` on every backend
#   sanitizer  cross_backend on CUDA alone under compute-sanitizer (memcheck)
#   forward, analyze   when the binary has these commands
# The table is printed last; $OUT gets summary.txt, profile.json,
# devices.json and logs.tar.gz (every log).
#
# In --local mode the shapes are small, CUDA steps answer "unavailable" when
# there is no GPU (not a failure), nothing is installed, and the exit status
# is non-zero only when a step that can run here fails.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
here=$root/scripts/device-check

mode=device
kit=device-kit
budget=
out=${OUT:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --local) mode=local; shift ;;
    --kit) kit=${2:?--kit needs a folder}; shift 2 ;;
    --budget) budget=${2:?--budget needs seconds}; shift 2 ;;
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$budget" ] || { [ $mode = device ] && budget=480 || budget=110; }
[ -n "$out" ] || out=$root/target/device-check
case "$kit" in /*) ;; *) kit=$root/$kit ;; esac
mkdir -p "$out"
logs=$(mktemp -d "${TMPDIR:-/tmp}/quantscope-check.XXXXXX")
mkdir -p "$logs/profile" "$logs/forward"
steps=$logs/steps.tsv
: >"$steps"
t0=$(date +%s)

bin=$kit/bin/quantscope
if [ ! -x "$bin" ]; then
  echo "run.sh: no kit at $kit (run scripts/device-check/build.sh first)" >&2
  exit 2
fi
[ -f "$kit/MANIFEST" ] && cp "$kit/MANIFEST" "$logs/MANIFEST"

# ---- sizes of this mode ----------------------------------------------------
if [ $mode = device ]; then
  shape=16384x16384
  runs=30
  copy_mib=1024
  vector_size=large
  preset=clip-vit-l14
  lim_test=150
  lim_sanitizer=120
  lim_profile=45
  lim_vector=90
  lim_forward=60
  lim_analyze=150
else
  shape=256x320
  runs=3
  copy_mib=4
  vector_size=100000
  preset=tiny
  lim_test=40
  lim_sanitizer=30
  lim_profile=20
  lim_vector=30
  lim_forward=30
  lim_analyze=40
fi

# ---- the step runner ---------------------------------------------------------
elapsed() { echo $(($(date +%s) - t0)); }
left() { echo $((budget - $(elapsed))); }
# record NAME STATUS SECONDS NOTE
record() {
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$steps"
  printf '[%4ss] %-22s %-12s %s\n' "$(elapsed)" "$1" "$2" "$4"
}
# The last lines of a failed step's log, inline, so one call's output shows why.
show_tail() {
  echo "       --- last lines of $(basename "$1") ---"
  tail -n "${2:-12}" "$1" | cut -c1-300 | sed 's/^/       | /'
}
# step NAME LIMIT CMD...: runs CMD under `timeout`, log in $logs/NAME.log.
step() {
  local name=$1 limit=$2
  shift 2
  local l
  l=$(left)
  if [ "$l" -lt 5 ]; then
    record "$name" skipped 0 "over budget ($budget s)"
    return 0
  fi
  [ "$limit" -gt "$l" ] && limit=$l
  local log=$logs/$name.log s0 rc secs
  s0=$(date +%s.%N)
  echo "\$ $*" >"$log"
  timeout -k 5 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  secs=$(awk -v a="$s0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  case $rc in
    0) record "$name" ok "$secs" "" ;;
    124 | 137) record "$name" TIMEOUT "$secs" "killed after $limit s"; show_tail "$log" ;;
    *) record "$name" FAIL "$secs" "exit $rc"; show_tail "$log" ;;
  esac
  return 0
}
unavailable() { record "$1" unavailable 0 "$2"; }

# ---- env: libraries the binaries load, and their versions ------------------
env_log=$logs/env.log
say() { echo "$*" | tee -a "$env_log"; }

# cudarc (cuda-12080 bindings) dlopens libnvrtc.so, libnvrtc.so.12/.11/...,
# libcublas.so(.12...) and libcuda.so(.1) but never *.so.13, the only names
# CUDA 13 ships (toolkit and cu13 wheels). A folder of links with the names
# cudarc tries, plus the real folders (libnvrtc-builtins, libcublasLt), on
# LD_LIBRARY_PATH makes CUDA 13's libraries found.
setup_cuda_libs() {
  local links=$logs/lib-links dirs=() sp cands=()
  mkdir -p "$links"
  # QUANTSCOPE_CUDA_LIBS (folders) first, then LD_LIBRARY_PATH's own.
  local IFS_=$IFS
  IFS=:
  cands+=(${QUANTSCOPE_CUDA_LIBS:-} ${LD_LIBRARY_PATH:-})
  IFS=$IFS_
  cands+=(/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib)
  for d in /usr/local/cuda-*/lib64; do cands+=("$d"); done
  if command -v python3 >/dev/null 2>&1; then
    for sp in $(python3 -c 'import site, sys; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null); do
      for d in "$sp"/nvidia/*/lib "$sp"/nvidia/*/*/lib; do [ -d "$d" ] && cands+=("$d"); done
    done
  fi
  cands+=(/usr/lib/x86_64-linux-gnu /usr/local/nvidia/lib64 /usr/local/nvidia/lib)
  local lib found d f
  for lib in nvrtc cublas cublasLt; do
    found=
    for d in "${cands[@]}"; do
      [ -d "$d" ] || continue
      # Highest version first; libnvrtc-builtins and .alt are not the API.
      f=$(ls "$d"/lib$lib.so* 2>/dev/null | grep -v -e builtins -e '\.alt' | sort -V | tail -n 1)
      if [ -n "$f" ]; then found=$(readlink -f "$f"); break; fi
    done
    if [ -n "$found" ]; then
      ln -sf "$found" "$links/lib$lib.so"
      dirs+=("$(dirname "$found")")
      say "lib$lib: $found"
    else
      say "lib$lib: not found (searched ${cands[*]})"
    fi
  done
  if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1'; then
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu; do
      if [ -e "$d/libcuda.so.1" ]; then
        ln -sf "$d/libcuda.so.1" "$links/libcuda.so"
        dirs+=("$d")
        break
      fi
    done
  fi
  local path=$links
  for d in "${dirs[@]}"; do
    case ":$path:" in *":$d:"*) ;; *) path=$path:$d ;; esac
  done
  export LD_LIBRARY_PATH=$path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
}

nvrtc_version() {
  command -v python3 >/dev/null 2>&1 || return 0
  python3 - "$1" <<'PY' 2>/dev/null
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
a, b = ctypes.c_int(), ctypes.c_int()
if lib.nvrtcVersion(ctypes.byref(a), ctypes.byref(b)) == 0:
    print(f"{a.value}.{b.value}")
PY
}

# The Vulkan loader: the device image may lack it; the kit carries the
# packages (the device tool's README recipe: unpack into /, ldconfig).
setup_vulkan() {
  if ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; then
    say "libvulkan.so.1: $(ldconfig -p | grep -m1 'libvulkan\.so\.1' | sed 's/.*=> //')"
  elif [ $mode = device ] && ls "$kit"/gl/*.deb >/dev/null 2>&1; then
    for f in "$kit"/gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
    say "libvulkan.so.1: unpacked from the kit ($(ls "$kit"/gl | tr '\n' ' '))"
  else
    say "libvulkan.so.1: not found (wgpu-Vulkan will be unavailable)"
  fi
  if [ $mode = device ]; then
    local icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    local egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
    if [ -f "$icd" ] && ! ls /usr/share/vulkan/icd.d/nvidia* /etc/vulkan/icd.d/nvidia* >/dev/null 2>&1; then
      export VK_DRIVER_FILES=$icd
      [ -f "$egl" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$egl
      say "VK_DRIVER_FILES=$icd"
    fi
    # The ICD names libGLX_nvidia.so.0 without a folder.
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
      if [ -d "$d" ]; then export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$d; fi
    done
    export QUANTSCOPE_WGPU_BACKEND=vulkan
  fi
  say "Vulkan ICDs: $(ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>/dev/null | grep json | tr '\n' ' ')"
}

echo "== quantscope GPU check ($mode mode, budget $budget s, kit $kit)"
[ -f "$kit/MANIFEST" ] && head -n 2 "$kit/MANIFEST" | sed 's/^/   /'
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
export RUST_BACKTRACE=1
{
  say "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  say "host: $(uname -srm), $(nproc) cores"
  if command -v nvidia-smi >/dev/null 2>&1; then
    say "gpu: $(nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader 2>&1 | head -n 1)"
    driver_cuda=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -n 1)
    say "driver CUDA version: ${driver_cuda:-unknown}"
  else
    driver_cuda=
    say "gpu: no nvidia-smi"
  fi
  setup_cuda_libs
  nv=
  [ -e "$logs/lib-links/libnvrtc.so" ] && nv=$(nvrtc_version "$logs/lib-links/libnvrtc.so")
  say "NVRTC version: ${nv:-unknown}"
  if [ -n "$nv" ] && [ -n "$driver_cuda" ] \
    && [ "$(printf '%s\n%s\n' "$nv" "$driver_cuda" | sort -V | tail -n 1)" != "$driver_cuda" ]; then
    say "WARNING: NVRTC $nv is newer than the driver's CUDA $driver_cuda: the driver may refuse its PTX (UNSUPPORTED_PTX_VERSION)"
  fi
  setup_vulkan
  sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
  ptxas=$(command -v ptxas || ls /usr/local/cuda/bin/ptxas 2>/dev/null || true)
  say "compute-sanitizer: ${sanitizer:-not found}; ptxas: ${ptxas:-not found}"
} 2>&1
record env ok 0 "${nv:+NVRTC $nv, }driver CUDA ${driver_cuda:-none}"

# ---- devices -----------------------------------------------------------------
step devices 60 "$bin" devices
timeout -k 5 60 "$bin" devices --json >"$logs/devices.json" 2>/dev/null || echo '[]' >"$logs/devices.json"
available() { # kind -> exit 0 when `devices` lists it available
  python3 -c '
import json, sys
rows = json.load(open(sys.argv[1]))
sys.exit(0 if any(r.get("backend") == sys.argv[2] and r.get("available") for r in rows) else 1)
' "$logs/devices.json" "$1" 2>/dev/null
}
have_cuda=0; available cuda && have_cuda=1
have_wgpu=0; available wgpu && have_wgpu=1
cat "$logs/devices.log" | tail -n +2 | sed 's/^/   /'
# On the device a missing backend is a failure (the tests require both);
# locally it is a line.
need() { [ $mode = device ] || [ "$1" = 1 ]; }

# ---- tests ---------------------------------------------------------------------
export QUANTSCOPE_KERNELS_DIR=$root/kernels
tests=$kit/tests
compile_env=(env QUANTSCOPE_REQUIRE_NVRTC=1)
[ -n "$ptxas" ] && [ $mode = device ] && compile_env+=(QUANTSCOPE_PTXAS="$ptxas")
if [ $mode = device ]; then
  step test-cuda-compile $lim_test "${compile_env[@]}" "$tests/cuda_compile" --test-threads=4
  step test-cuda-opens $lim_test env QUANTSCOPE_REQUIRE_CUDA=1 "$tests/cuda_unavailable"
  step test-cross-backend $lim_test env QUANTSCOPE_REQUIRE_CUDA=1 QUANTSCOPE_REQUIRE_WGPU=1 \
    CUDA_LAUNCH_BLOCKING=1 "$tests/cross_backend" --test-threads=1
  # (its profile_* tests run the build-time binary path; the profile step
  # below runs the command itself)
  step test-wgpu $lim_test env QUANTSCOPE_REQUIRE_WGPU=1 "$tests/wgpu_backend" --skip profile_
else
  # The cheap tests of each binary: the dry run checks the kit, not kernels
  # (cargo test does that).
  step test-cuda-compile $lim_test "$tests/cuda_compile" common_header_structs_match_params_rs
  step test-cuda-opens $lim_test "$tests/cuda_unavailable"
  if need $have_wgpu; then
    step test-cross-backend $lim_test env QUANTSCOPE_REQUIRE_WGPU=1 \
      CUDA_LAUNCH_BLOCKING=1 "$tests/cross_backend" --test-threads=1 level_assignment_matches_the_cpu
    step test-wgpu $lim_test env QUANTSCOPE_REQUIRE_WGPU=1 "$tests/wgpu_backend" \
      --skip profile_ unknown_adapter_or_backend
  else
    unavailable test-cross-backend "no wgpu adapter here"
  fi
fi
# ---- profile ---------------------------------------------------------------------
# format|batch|extra flags
configs=(
  "f16|1|" "q8|1|" "q4|1|" "lut4|1|" "q4|1|--outliers 0.005"
  "q4|16|" "q8|16|" "f16|16|" "q4|512|" "q8|512|" "f16|512|"
)
profile_all() { # backend
  local b=$1 cfg f batch extra tag n=0 bad=0 s0 rc log l
  s0=$(date +%s)
  for cfg in "${configs[@]}"; do
    IFS='|' read -r f batch extra <<<"$cfg"
    tag=$f${extra:+-outliers}-b$batch
    log=$logs/profile/$b-$tag
    l=$(left)
    if [ "$l" -lt 10 ]; then
      echo "skipped (over budget)" >"$log.err"
      bad=$((bad + 1)); n=$((n + 1))
      continue
    fi
    [ "$l" -gt "$lim_profile" ] && l=$lim_profile
    # shellcheck disable=SC2086
    timeout -k 5 "$l" "$bin" profile --backend "$b" --format "$f" --shape "$shape" \
      --batch "$batch" --group 128 --runs "$runs" --copy-mib "$copy_mib" $extra --json \
      >"$log.json" 2>"$log.err"
    rc=$?
    n=$((n + 1))
    if [ $rc -ne 0 ]; then
      bad=$((bad + 1))
      echo "exit $rc" >>"$log.err"
      show_tail "$log.err" 4
    fi
  done
  if [ $bad -eq 0 ]; then
    record "profile-$b" ok "$(($(date +%s) - s0))" "$n runs at $shape"
  else
    record "profile-$b" FAIL "$(($(date +%s) - s0))" "$bad of $n runs failed or skipped"
  fi
}
if need $have_cuda; then profile_all cuda; else unavailable profile-cuda "no CUDA device here"; fi
if need $have_wgpu; then profile_all wgpu; else unavailable profile-wgpu "no wgpu adapter here"; fi

# ---- vector study ------------------------------------------------------------------
step vector $lim_vector "$bin" vector --size "$vector_size" --bits 3 --backend all \
  --no-plots --save-dir "$logs/vector"

# ---- compute-sanitizer ----------------------------------------------------------
# After the figures: CUDA_LAUNCH_BLOCKING=1 above already names a kernel
# that faults; memcheck finds the out-of-bounds accesses that do not fault.
if ! need $have_cuda; then
  unavailable sanitizer "no CUDA device here"
elif [ -z "$sanitizer" ]; then
  record sanitizer FAIL 0 "compute-sanitizer not found"
else
  step sanitizer $lim_sanitizer env QUANTSCOPE_REQUIRE_CUDA=1 QUANTSCOPE_TEST_BACKENDS=cuda \
    "$sanitizer" --tool memcheck --error-exitcode 3 --print-limit 20 \
    "$tests/cross_backend" --test-threads=1 every_backend_matches_the_cpu
fi

# ---- forward pass and analyzer (when the binary has them) ------------------------
if "$bin" forward --help >/dev/null 2>&1; then
  fwd_backends=()
  need $have_cuda && fwd_backends+=(cuda)
  need $have_wgpu && fwd_backends+=(wgpu)
  if [ $mode = device ]; then strategies=(f16 int8 int4); else strategies=(int8); fi
  for b in "${fwd_backends[@]}"; do
    for s in "${strategies[@]}"; do
      step "forward-$b-$s" $lim_forward "$bin" forward --preset "$preset" --strategy "$s" \
        --backend "$b" --json
      cp "$logs/forward-$b-$s.log" "$logs/forward/$b-$s.json" 2>/dev/null
    done
  done
else
  record forward skipped 0 "this build has no \`quantscope forward\`"
fi
if "$bin" analyze --help >/dev/null 2>&1; then
  if [ $mode = device ]; then
    # The strategy list this step was sized for (w8a8 joined analyze's
    # defaults later; its CUDA kernels are in cross_backend above).
    step analyze $lim_analyze "$bin" analyze --preset "$preset" --backends cuda,wgpu \
      --strategies none,f16,int8,int4,int4-clip,nf4,kmeans4,easyquant4,gptq-int4,awq-int4 \
      --results-dir "$logs/analyze" --json
  else
    ab=cpu
    [ $have_wgpu = 1 ] && ab=cpu,wgpu
    step analyze $lim_analyze "$bin" analyze --preset "$preset" --strategies none,int8 \
      --backends "$ab" --results-dir "$logs/analyze" --json
  fi
else
  record analyze skipped 0 "this build has no \`quantscope analyze\`"
fi

# ---- the table, the files ------------------------------------------------------------
python3 "$here/table.py" "$logs" "$mode" >"$logs/summary.txt" 2>&1 \
  || { echo "(table.py failed; the steps as recorded:)"; cat "$steps"; } >>"$logs/summary.txt"
cp "$logs/summary.txt" "$logs/devices.json" "$out/" 2>/dev/null
[ -f "$logs/profile.json" ] && cp "$logs/profile.json" "$out/"
tar -czf "$out/logs.tar.gz" -C "$(dirname "$logs")" "$(basename "$logs")" 2>/dev/null
echo
cat "$logs/summary.txt"
echo "files: $out/summary.txt, profile.json, devices.json, logs.tar.gz (every log)"
failed=$(awk -F'\t' '$2 == "FAIL" || $2 == "TIMEOUT"' "$steps" | wc -l)
rm -rf "$logs"
[ "$failed" -eq 0 ]
