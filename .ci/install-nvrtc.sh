#!/usr/bin/env bash
# Installs NVRTC (libnvrtc) and the CUDA runtime headers (cuda_fp16.h, ...)
# from the PyPI wheels into a cache folder, so a machine without a GPU or a
# CUDA toolkit can compile kernels/*.cu to PTX (tests/cuda_compile.rs).
#
# Idempotent: when the cache already holds both, it installs nothing.
# Prints the environment to use on stdout, so CI does:
#
#     eval "$(.ci/install-nvrtc.sh)"
#
# Progress and errors go to stderr. Override the folder with
# QUANTSCOPE_NVRTC_CACHE, the wheel versions with NVRTC_WHEEL / RUNTIME_WHEEL.
set -euo pipefail

cache="${QUANTSCOPE_NVRTC_CACHE:-$HOME/.cache/quantscope-nvrtc}"
nvrtc_wheel="${NVRTC_WHEEL:-nvidia-cuda-nvrtc-cu12==12.8.*}"
runtime_wheel="${RUNTIME_WHEEL:-nvidia-cuda-runtime-cu12==12.8.*}"
libdir="$cache/nvidia/cuda_nvrtc/lib"
incdir="$cache/nvidia/cuda_runtime/include"

have() {
    compgen -G "$libdir/libnvrtc.so*" >/dev/null && [ -f "$incdir/cuda_fp16.h" ]
}

if ! have; then
    py=""
    for p in python3 python; do
        if command -v "$p" >/dev/null 2>&1; then py="$p"; break; fi
    done
    if [ -z "$py" ]; then
        echo "install-nvrtc: no python3 found; cannot install the NVRTC wheels" >&2
        exit 1
    fi
    echo "install-nvrtc: installing $nvrtc_wheel $runtime_wheel into $cache" >&2
    mkdir -p "$cache"
    "$py" -m pip install --quiet --disable-pip-version-check --no-deps \
        --upgrade --target "$cache" "$nvrtc_wheel" "$runtime_wheel" >&2
fi

if ! have; then
    echo "install-nvrtc: libnvrtc or cuda_fp16.h missing under $cache after install" >&2
    exit 1
fi

# cudarc's loader tries libnvrtc.so, then libnvrtc.so.12 and friends; the
# wheel ships libnvrtc.so.12 (plus libnvrtc-builtins), found through
# LD_LIBRARY_PATH. A plain libnvrtc.so link makes the first name hit too.
if [ ! -e "$libdir/libnvrtc.so" ]; then
    target="$(cd "$libdir" && ls libnvrtc.so.* 2>/dev/null | head -n1)"
    if [ -n "$target" ]; then ln -sf "$target" "$libdir/libnvrtc.so"; fi
fi

echo "export LD_LIBRARY_PATH=\"$libdir\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
echo "export QUANTSCOPE_CUDA_INCLUDE=\"$incdir\""
