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
# It also installs `ptxas` (wheel nvidia-cuda-nvcc-cu12) and exports
# QUANTSCOPE_PTXAS: the compile test then assembles the PTX too, which checks
# the inline PTX that NVRTC passes through unchecked. Nothing at run time needs
# ptxas (the driver JIT-compiles the PTX). QUANTSCOPE_NO_PTXAS=1 skips it.
#
# Progress and errors go to stderr. Override the folder with
# QUANTSCOPE_NVRTC_CACHE, the wheel versions with NVRTC_WHEEL / RUNTIME_WHEEL /
# NVCC_WHEEL.
set -euo pipefail

cache="${QUANTSCOPE_NVRTC_CACHE:-$HOME/.cache/quantscope-nvrtc}"
nvrtc_wheel="${NVRTC_WHEEL:-nvidia-cuda-nvrtc-cu12==12.8.*}"
runtime_wheel="${RUNTIME_WHEEL:-nvidia-cuda-runtime-cu12==12.8.*}"
nvcc_wheel="${NVCC_WHEEL:-nvidia-cuda-nvcc-cu12==12.8.*}"
want_ptxas=1
if [ "${QUANTSCOPE_NO_PTXAS:-0}" = "1" ]; then want_ptxas=0; fi
libdir="$cache/nvidia/cuda_nvrtc/lib"
incdir="$cache/nvidia/cuda_runtime/include"
ptxas="$cache/nvidia/cuda_nvcc/bin/ptxas"

have() {
    compgen -G "$libdir/libnvrtc.so*" >/dev/null && [ -f "$incdir/cuda_fp16.h" ] &&
        { [ "$want_ptxas" = 0 ] || [ -x "$ptxas" ]; }
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
    wheels=("$nvrtc_wheel" "$runtime_wheel")
    if [ "$want_ptxas" = 1 ]; then wheels+=("$nvcc_wheel"); fi
    echo "install-nvrtc: installing ${wheels[*]} into $cache" >&2
    mkdir -p "$cache"
    "$py" -m pip install --quiet --disable-pip-version-check --no-deps \
        --upgrade --target "$cache" "${wheels[@]}" >&2
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
if [ "$want_ptxas" = 1 ]; then echo "export QUANTSCOPE_PTXAS=\"$ptxas\""; fi
