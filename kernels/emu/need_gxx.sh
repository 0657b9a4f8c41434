# Sourced by run.sh and negative.sh. `need_gxx WHAT` returns when g++ is on
# PATH. Without it: one line saying WHAT is skipped, and exit 0; under
# CI=true, where the emulation must run, an error, and exit 1.
need_gxx() {
  if command -v g++ >/dev/null 2>&1; then
    return 0
  fi
  if [ "${CI:-}" = "true" ]; then
    echo "error: $1 needs g++ (>= 11) and CI=true: the CUDA kernel emulation must run in CI" >&2
    exit 1
  fi
  echo "skipping $1: g++ not found"
  exit 0
}
