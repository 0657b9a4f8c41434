#!/usr/bin/env bash
# The aarch64 NEON path of the CPU kernels, cross-built and run under
# qemu-user: tests/cpu_kernels.rs (every path against the scalar path and an
# f64 reference) and the library's unit tests. Needs the rustup aarch64
# standard library and Debian's aarch64 gcc/g++ (freetype-sys builds C) and
# qemu-user; when they cannot be installed it says so in one line and skips
# (exit 0) locally, because they come from outside the project (rustup's and
# Debian's servers). In CI (CI=true) a skip is a failure (exit 1): the NEON
# path is tested there or the run says it was not.
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
skip() {
  if [ "${CI:-}" = "true" ]; then
    echo "aarch64 NEON tests: FAILED: not run in CI ($1)" >&2
    exit 1
  fi
  echo "aarch64 NEON tests: SKIPPED ($1)"
  exit 0
}
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  timeout 600 rustup target add "$target" >/dev/null 2>&1 \
    || skip "could not install the $target standard library with rustup"
fi
if ! command -v qemu-aarch64 >/dev/null 2>&1 || ! command -v aarch64-linux-gnu-g++ >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || skip "no apt-get for qemu-user and the aarch64 gcc"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    qemu-user gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross) >/dev/null 2>&1 \
    || skip "could not install qemu-user and the aarch64 gcc"
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
# The CPU kernels do not need the GPU backends; a separate target dir keeps
# the host build's artifacts apart.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/aarch64-cross"
# Warnings in the aarch64-only code fail the run (clippy would build the
# crate a second time; CI keeps under 20 minutes).
export RUSTFLAGS="${RUSTFLAGS:-} -D warnings"
# Dependencies at opt-level 0 here (2 in the host build): the kernels under
# test are this crate's own code (opt-level 1 as always), and the cross build
# of faer, tokenizers and image at opt-level 2 was most of this step's time.
cargo test --target "$target" --no-default-features --test cpu_kernels --lib \
  --config 'profile.dev.package."*".opt-level=0'
