#!/usr/bin/env bash
# Builds the GPU check kit: the quantscope binary and the test binaries the
# device check runs, stripped, plus the Vulkan loader packages the device
# image may lack, into one git-ignored folder (default device-kit/) that the
# device tool carries. Prints the folder's size and the exact `run` call.
#
#   scripts/device-check/build.sh [--profile kit|dev] [--out DIR] [--no-gl]
#
# --profile kit (default): the Cargo profile `kit` (release code, no
#   debuginfo, stripped). --profile dev: the debug binaries `cargo test`
#   already built (what CI's dry run uses: no second build).
# --out DIR: the kit folder (default device-kit under the repository root;
#   the device tool carries paths inside the repository only).
# --no-gl: skip downloading the Vulkan loader packages (CI).
# Fails when the build fails or the folder exceeds 60 MiB (the tool carries
# 64 MiB per call, the working tree included).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

profile=kit
kit=device-kit
gl=1
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=${2:?--profile needs a name}; shift 2 ;;
    --out) kit=${2:?--out needs a folder}; shift 2 ;;
    --no-gl) gl=0; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

# The test binaries the check runs (tests/NAME.rs).
tests=(cross_backend cuda_compile cuda_unavailable wgpu_backend)
limit_mib=60

# `dev` means the binaries of a plain `cargo test` (profile test/dev): asking
# for them by that name reuses what CI has already built.
profile_args=()
if [ "$profile" != dev ] && [ "$profile" != test ]; then
  profile_args=(--profile "$profile")
fi
test_args=()
for t in "${tests[@]}"; do test_args+=(--test "$t"); done

# Executables from cargo's JSON messages (one per line).
executables() {
  python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])
'
}

echo "== building (profile $profile)"
# One cargo call: building integration tests also builds the binary (for
# CARGO_BIN_EXE_quantscope) with the same profile, and cargo reports it, so
# after a plain `cargo test` nothing is rebuilt.
artifacts=$(cargo test "${profile_args[@]}" --no-run "${test_args[@]}" \
  --message-format=json-render-diagnostics | executables)

rm -rf "$kit/bin" "$kit/tests"
mkdir -p "$kit/bin" "$kit/tests"
copy() { # name path dest-folder
  cp "$2" "$3/$1"
  # Idempotent on the stripped kit profile; dev binaries carry line tables.
  if command -v strip >/dev/null 2>&1; then strip "$3/$1"; fi
}
while read -r name path; do
  if [ "$name" = quantscope ]; then copy "$name" "$path" "$kit/bin"; fi
  for t in "${tests[@]}"; do
    if [ "$name" = "$t" ]; then copy "$name" "$path" "$kit/tests"; fi
  done
done <<<"$artifacts"
for t in quantscope; do
  [ -x "$kit/bin/$t" ] || { echo "build.sh: no $t binary was built" >&2; exit 1; }
done
for t in "${tests[@]}"; do
  [ -x "$kit/tests/$t" ] || { echo "build.sh: no test binary tests/$t" >&2; exit 1; }
done

# The Vulkan loader (and the GL/EGL dispatch libraries the NVIDIA ICD needs)
# as Debian packages, unpacked on the device only when its image lacks
# libvulkan.so.1 (the device tool's README recipe). Cached across builds.
if [ "$gl" = 1 ]; then
  mkdir -p "$kit/gl"
  if ! ls "$kit"/gl/libvulkan1_*.deb >/dev/null 2>&1; then
    lists=$(mktemp -d)
    o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 "-oDir::State::Lists=$lists")
    mkdir -p "$lists/partial"
    if (apt-get "${o[@]}" update -qq && cd "$kit/gl" \
        && apt-get "${o[@]}" download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2) \
        >/dev/null 2>&1; then
      echo "== Vulkan loader packages: $(ls "$kit/gl" | tr '\n' ' ')"
    else
      echo "warning: could not download the Vulkan loader packages; on a device image" \
        "without libvulkan.so.1 the wgpu steps will report Vulkan unavailable" >&2
    fi
    rm -rf "$lists"
  fi
fi

# What was built, so a log on the device says which commit it measured.
{
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), profile $profile"
  echo "rustc: $(rustc --version 2>/dev/null || echo unknown)"
  (cd "$kit" && find . -path ./MANIFEST -prune -o -type f -print | sort | xargs -r ls -l \
    | awk '{ sub("^./", "", $9); print $5, $9 }')
} >"$kit/MANIFEST"

bytes=$(du -sb "$kit" | cut -f1)
mib=$(( (bytes + (1 << 20) - 1) >> 20 ))
echo "== kit: $kit, $mib MiB ($bytes bytes; limit $limit_mib MiB)"
(cd "$kit" && du -b bin/* tests/* | sort -rn | awk '{printf "   %6.1f MiB  %s\n", $1 / 1048576, $2}')
if [ "$bytes" -gt $((limit_mib << 20)) ]; then
  echo "build.sh: the kit is $mib MiB, over the $limit_mib MiB limit" >&2
  exit 1
fi
case "$kit" in
  /*) rel=${kit#"$root"/} ;;
  *) rel=$kit ;;
esac
if git check-ignore -q "$rel/MANIFEST" 2>/dev/null; then :; else
  echo "warning: $rel is not git-ignored: the device tool would send it as part of the working tree" >&2
fi
kit_arg=
[ "$rel" = device-kit ] || kit_arg=" --kit $rel"
cat <<CALL
== on a session lent the GPU machine, one call (about 8 minutes):
run(command="bash scripts/device-check/run.sh$kit_arg", carry=["$rel"], timeout_s=570)
   results: the table at the end of the output; \$OUT/summary.txt and \$OUT/logs.tar.gz
CALL
