#!/usr/bin/env python3
"""The short table run.sh prints last, from the logs folder it fills.

usage: table.py LOGS MODE

Reads LOGS/steps.tsv (name, status, seconds, note), LOGS/env.log,
LOGS/profile/<backend>-<tag>.json (`quantscope profile --json`) and
LOGS/vector/results.txt; writes LOGS/profile.json (every profile run, one
list) and prints the table: steps, the profile figures beside the copy
bandwidth and cuBLAS, the issue's targets, and the vector study's timings.
Standard library only (the device image's python3 has no extras we need).
"""

import glob
import json
import os
import re
import sys

# The targets (docs/CUDA.md, "The GPU check kit").
TARGET_CUDA_GEMV = 0.80
TARGET_WGPU_GEMV = 0.60
TARGET_Q4_VS_CUBLAS = 2.0


def read_steps(logs):
    rows = []
    path = os.path.join(logs, "steps.tsv")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) == 4:
                    rows.append(parts)
    return rows


def env_line(logs, key):
    path = os.path.join(logs, "env.log")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return line[len(key) + 1 :].strip()
    return None


def read_profiles(logs):
    """{(backend, tag): parsed JSON or the error text}."""
    out = {}
    for path in sorted(glob.glob(os.path.join(logs, "profile", "*.json"))):
        name = os.path.basename(path)[: -len(".json")]
        backend, _, tag = name.partition("-")
        try:
            with open(path) as f:
                out[(backend, tag)] = json.load(f)
        except (ValueError, OSError):
            err = path[: -len(".json")] + ".err"
            text = open(err).read().strip() if os.path.exists(err) else ""
            lines = [l for l in text.splitlines() if l.strip()]
            out[(backend, tag)] = lines[-2] if len(lines) > 1 else (lines[-1] if lines else "no output")
    return out


def fmt(v, spec, none="-"):
    return none if v is None else format(v, spec)


def gbs(v):
    """GB/s with three significant figures at most (lavapipe's are small)."""
    if v is None:
        return "-"
    return format(v, ".0f" if v >= 100 else ".1f" if v >= 10 else ".2f")


def profile_table(profiles):
    tags = []
    for (_, tag) in profiles:
        if tag not in tags:
            tags.append(tag)

    formats = ["f32", "f16", "bf16", "q8", "q4", "lut4", "q4-outliers"]

    def order(tag):
        m = re.match(r"(.*)-b(\d+)$", tag)
        if not m:
            return (0, len(formats), tag)
        f = m.group(1)
        return (int(m.group(2)), formats.index(f) if f in formats else len(formats), tag)

    tags.sort(key=order)
    lines = []
    head = "{:<16} {:>5} | {:>9} {:>8} {:>6} | {:>9} {:>8} {:>6} | {:>10} {:>7}".format(
        "format", "batch", "cuda ms", "GB/s", "%copy", "wgpu ms", "GB/s", "%copy", "cuBLAS ms", "vs cuBL"
    )
    lines.append(head)
    lines.append("-" * len(head))
    copy = {}
    findings = []
    errors = []
    for tag in tags:
        m = re.match(r"(.*)-b(\d+)$", tag)
        fmt_name, batch = (m.group(1), int(m.group(2))) if m else (tag, 0)
        cells = []
        cublas = None
        cuda_s = None
        for backend in ("cuda", "wgpu"):
            p = profiles.get((backend, tag))
            if isinstance(p, dict) and p.get("kernels"):
                k = p["kernels"][0]
                frac = k.get("fraction_of_bandwidth")
                cells += [
                    fmt(k.get("median_s", 0) * 1e3, ".3f"),
                    gbs(k.get("gb_per_s")),
                    fmt(None if frac is None else 100 * frac, ".1f"),
                ]
                bw = p.get("bandwidth")
                if bw and backend not in copy:
                    copy[backend] = (bw.get("gb_per_s"), p.get("device"))
                if backend == "cuda":
                    cuda_s = k.get("median_s")
                    cublas = p.get("cublas_f16_gemm")
                target = TARGET_CUDA_GEMV if backend == "cuda" else TARGET_WGPU_GEMV
                if batch == 1 and fmt_name in ("q4", "q8") and frac is not None:
                    ok = "met" if frac >= target else "MISSED"
                    findings.append(
                        f"{backend} {fmt_name} GEMV >= {target:.0%} of copy bandwidth: {ok} ({frac:.1%})"
                    )
            else:
                cells += ["-", "-", "-"]
                if p is not None:
                    errors.append(f"{backend} {tag}: {p}")
        if cublas and cuda_s:
            cells += [fmt(cublas["median_s"] * 1e3, ".3f"), fmt(cublas["median_s"] / cuda_s, ".2f") + "x"]
            if fmt_name == "q4" and batch == 16:
                r = cublas["median_s"] / cuda_s
                ok = "met" if r >= TARGET_Q4_VS_CUBLAS else "MISSED"
                findings.append(f"cuda q4 GEMM batch 16 >= {TARGET_Q4_VS_CUBLAS:.0f}x cuBLAS f16: {ok} ({r:.2f}x)")
        else:
            cells += ["-", "-"]
        lines.append(
            "{:<16} {:>5} | {:>9} {:>8} {:>6} | {:>9} {:>8} {:>6} | {:>10} {:>7}".format(fmt_name, batch, *cells)
        )
    for backend, (gbps, device) in sorted(copy.items()):
        lines.append(f"copy bandwidth {backend}: {gbs(gbps)} GB/s ({device})")
    return lines, findings, errors


def vector_lines(logs):
    """results.txt as one row per approach: latency (fit + quantize) per
    device and the ||v - q||/N figure, which must agree across devices."""
    path = os.path.join(logs, "vector", "results.txt")
    if not os.path.exists(path):
        return []
    devices, rows = [], {}
    device = approach = None
    with open(path) as f:
        for line in f:
            line = line.strip()
            m = re.match(r"Vector Size: (\S+?)_+multiprocess: \S+?_+device: (\S+)", line)
            if m:
                device = f"{m.group(2)}"
                if device not in devices:
                    devices.append(device)
                continue
            m = re.match(r"(.+) Quantization:(.*)$", line)
            if m:
                approach = m.group(1)
                rows.setdefault(approach, {})
                if m.group(2).strip():
                    rows[approach][device] = ("skipped", None)
                continue
            if approach is None or device is None:
                continue
            m = re.match(r"L2 Norm: (\S+)", line)
            if m:
                rows[approach][device] = (None, m.group(1))
            m = re.match(r"Latency: (\S+) seconds", line)
            if m and device in rows[approach]:
                rows[approach][device] = (m.group(1), rows[approach][device][1])
    if not devices:
        return []
    head = "{:<18}".format("approach") + "".join(" {:>10}".format(d + " s") for d in devices) + "  ||v-q||/N per device"
    out = [head]
    for approach, per in rows.items():
        lat = "".join(" {:>10}".format((per.get(d) or ("-", None))[0] or "-") for d in devices)
        norms = " ".join((per.get(d) or (None, "-"))[1] or "-" for d in devices)
        out.append("{:<18}".format(approach[:18]) + lat + "  " + norms)
    return out


def main():
    logs, mode = sys.argv[1], sys.argv[2]
    steps = read_steps(logs)
    profiles = read_profiles(logs)
    with open(os.path.join(logs, "profile.json"), "w") as f:
        json.dump(
            [{"backend": b, "run": t, "result": r} for (b, t), r in sorted(profiles.items())],
            f,
            indent=1,
        )
    print(f"== quantscope GPU check ({mode}), {env_line(logs, 'date') or ''}")
    for key in ("gpu", "driver CUDA version", "NVRTC version", "libnvrtc", "libvulkan.so.1"):
        v = env_line(logs, key)
        if v:
            print(f"   {key}: {v}")
    print()
    print("{:<24} {:<12} {:>7}  {}".format("step", "status", "s", "note"))
    for name, status, secs, note in steps:
        print("{:<24} {:<12} {:>7}  {}".format(name, status, secs, note))
    lines, findings, errors = profile_table(profiles)
    if profiles:
        print()
        print("profile (median; %copy = achieved bytes/s over the measured device-to-device copy;")
        print("         vs cuBL = cuBLAS f16 GEMM time / cuda kernel time, > 1 = faster than cuBLAS)")
        for l in lines:
            print(l)
    if findings:
        print()
        print("targets (a miss is a finding):")
        for l in findings:
            print("  " + l)
    if errors:
        print()
        print("profile runs without a result:")
        for l in errors[:12]:
            print("  " + l[:200])
    vl = vector_lines(logs)
    if vl:
        print()
        print("vector study (latency = fit + quantize, seconds):")
        for l in vl:
            print(l[:160])
    failed = [s for s in steps if s[1] in ("FAIL", "TIMEOUT")]
    print()
    print(f"{len(failed)} step(s) failed" + (": " + ", ".join(s[0] for s in failed) if failed else ""))


if __name__ == "__main__":
    main()
