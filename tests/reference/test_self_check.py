#!/usr/bin/python3
"""Self-checks of qwen3_moe_ref.py on hand-made random Qwen3-MoE checkpoints.

Without torch there is no Hugging Face run to compare with, so these pin what a correct forward pass must
satisfy: agreement with an independently written token-by-token float64 implementation (KV cache, loops
over heads and experts), causality, prefix consistency, RoPE's relative-position property, YaRN frequencies
derived by hand, router normalisation, and the loader's dtype and shard handling. Run:
    /usr/bin/python3 tests/reference/test_self_check.py [--perf]
"""

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "qwen3_moe_ref.py")
sys.path.insert(0, HERE)
import qwen3_moe_ref as ref  # noqa: E402

# Odd sizes on purpose: heads * head_dim != hidden, a dense layer among MoE layers, GQA group 3.
CONFIG_DEFAULT_ROPE = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 97, "hidden_size": 48,
    "intermediate_size": 40, "moe_intermediate_size": 24, "num_hidden_layers": 3, "num_attention_heads": 6,
    "num_key_value_heads": 2, "head_dim": 16, "num_experts": 5, "num_experts_per_tok": 2,
    "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [1], "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "rope_scaling": None, "max_position_embeddings": 4096,
    "tie_word_embeddings": False, "hidden_act": "silu", "torch_dtype": "float32",
}
# YaRN, tied embeddings (no lm_head in the file), every other layer MoE, unnormalised top-k weights.
CONFIG_YARN_TIED = {
    **CONFIG_DEFAULT_ROPE, "vocab_size": 61, "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 1, "head_dim": 8, "num_experts": 7, "num_experts_per_tok": 3, "norm_topk_prob": False,
    "decoder_sparse_step": 2, "mlp_only_layers": [], "rope_theta": 10000.0, "max_position_embeddings": 512,
    "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128},
    "tie_word_embeddings": True,
}


# ----------------------------------------------------------------------------------------------------------
# Checkpoint writer (the format read_safetensors parses, written independently of it).


def to_bf16_bits(x):
    """float32 -> bf16 bit patterns, round to nearest even (finite inputs)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_round(x):
    return (to_bf16_bits(x).astype(np.uint32) << 16).view(np.float32)


def write_safetensors(path, tensors, dtype):
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in tensors.items():
        if dtype == "BF16":
            blob = to_bf16_bits(t).tobytes()
        else:
            blob = np.ascontiguousarray(t, dtype="<f4" if dtype == "F32" else "<f2").tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head + b"".join(blobs))


def write_checkpoint(folder, config, tensors, dtype="F32", shards=1):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    if shards == 1:
        write_safetensors(os.path.join(folder, "model.safetensors"), tensors, dtype)
        return
    names, weight_map = list(tensors), {}
    for s in range(shards):
        shard = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s::shards]}
        write_safetensors(os.path.join(folder, shard), part, dtype)
        weight_map.update({n: shard for n in part})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


def random_tensors(c, seed):
    """HF-named random weights with O(1) activations: linears ~ 1/sqrt(fan_in), norms near 1."""
    rng = np.random.default_rng(seed)
    h, d, heads, kv = c["hidden_size"], c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"]

    def lin(out, inp):
        return (rng.standard_normal((out, inp)) / math.sqrt(inp)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    t = {"model.embed_tokens.weight": rng.standard_normal((c["vocab_size"], h)).astype(np.float32)}
    cfg = ref.config_from_dict(c)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = norm(h)
        t[p + "self_attn.q_proj.weight"] = lin(heads * d, h)
        t[p + "self_attn.k_proj.weight"] = lin(kv * d, h)
        t[p + "self_attn.v_proj.weight"] = lin(kv * d, h)
        t[p + "self_attn.o_proj.weight"] = lin(h, heads * d)
        t[p + "self_attn.q_norm.weight"] = norm(d)
        t[p + "self_attn.k_norm.weight"] = norm(d)
        t[p + "post_attention_layernorm.weight"] = norm(h)
        if cfg.layer_is_moe(i):
            t[p + "mlp.gate.weight"] = lin(c["num_experts"], h)
            experts = [f"{p}mlp.experts.{e}." for e in range(c["num_experts"])]
            inter = c["moe_intermediate_size"]
        else:
            experts, inter = [p + "mlp."], c["intermediate_size"]
        for x in experts:
            t[x + "gate_proj.weight"] = lin(inter, h)
            t[x + "up_proj.weight"] = lin(inter, h)
            t[x + "down_proj.weight"] = lin(h, inter)
    t["model.norm.weight"] = norm(h)
    if not c["tie_word_embeddings"]:
        t["lm_head.weight"] = lin(c["vocab_size"], h)
    return t


# ----------------------------------------------------------------------------------------------------------
# Independent float64 implementation: one token at a time with a KV cache, loops over heads and experts,
# RoPE as explicit pair rotations, YaRN from the paper's formula.


def hand_inv_freq(c):
    d, theta = c["head_dim"], c["rope_theta"]
    base = [theta ** (-2.0 * i / d) for i in range(d // 2)]
    scaling = c.get("rope_scaling")
    if not scaling:
        return base, 1.0
    factor, orig = scaling["factor"], scaling["original_max_position_embeddings"]
    # dimension index at which a wavelength completes r rotations over the original context
    def dim_for(r):
        return d * math.log(orig / (2 * math.pi * r)) / (2 * math.log(theta))
    low, high = max(math.floor(dim_for(32)), 0), min(math.ceil(dim_for(1)), d - 1)
    out = []
    for i, f in enumerate(base):
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)  # 0: keep original frequency, 1: divide by factor
        out.append(f * (1 - ramp) + f / factor * ramp)
    return out, 0.1 * math.log(factor) + 1.0


def naive_logits(c, t, ids):
    t = {k: v.astype(np.float64) for k, v in t.items()}
    d, heads, kv, eps = c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"], c["rms_norm_eps"]
    inv_freq, mscale = hand_inv_freq(c)
    lm_head = t["model.embed_tokens.weight"] if c["tie_word_embeddings"] else t["lm_head.weight"]
    cfg = ref.config_from_dict(c)

    def rms(x, w):
        return w * x / math.sqrt(float(np.dot(x, x)) / len(x) + eps)

    def rope(vec, pos):
        out = np.empty(d)
        for i in range(d // 2):
            a, b = vec[i], vec[i + d // 2]
            cs, sn = math.cos(pos * inv_freq[i]) * mscale, math.sin(pos * inv_freq[i]) * mscale
            out[i], out[i + d // 2] = a * cs - b * sn, b * cs + a * sn
        return out

    def swiglu(x, p):
        g = t[p + "gate_proj.weight"] @ x
        return t[p + "down_proj.weight"] @ (g / (1 + np.exp(-g)) * (t[p + "up_proj.weight"] @ x))

    cache = [([], []) for _ in range(c["num_hidden_layers"])]
    rows = []
    for pos, tok in enumerate(ids):
        x = t["model.embed_tokens.weight"][tok].copy()
        for layer in range(c["num_hidden_layers"]):
            p = f"model.layers.{layer}."
            hn = rms(x, t[p + "input_layernorm.weight"])
            q, k, v = (t[p + f"self_attn.{n}_proj.weight"] @ hn for n in "qkv")
            keys, values = cache[layer]
            keys.append([rope(rms(k[j * d:(j + 1) * d], t[p + "self_attn.k_norm.weight"]), pos) for j in range(kv)])
            values.append([v[j * d:(j + 1) * d] for j in range(kv)])
            heads_out = []
            for hh in range(heads):
                qh = rope(rms(q[hh * d:(hh + 1) * d], t[p + "self_attn.q_norm.weight"]), pos)
                g = hh // (heads // kv)
                s = np.array([np.dot(qh, keys[j][g]) / math.sqrt(d) for j in range(pos + 1)])
                w = np.exp(s - s.max())
                w /= w.sum()
                heads_out.append(sum(w[j] * values[j][g] for j in range(pos + 1)))
            x = x + t[p + "self_attn.o_proj.weight"] @ np.concatenate(heads_out)
            hn = rms(x, t[p + "post_attention_layernorm.weight"])
            if cfg.layer_is_moe(layer):
                logits = t[p + "mlp.gate.weight"] @ hn
                probs = np.exp(logits - logits.max())
                probs /= probs.sum()
                top = sorted(range(len(probs)), key=lambda e: -probs[e])[:c["num_experts_per_tok"]]
                total = sum(probs[e] for e in top) if c["norm_topk_prob"] else 1.0
                x = x + sum(probs[e] / total * swiglu(hn, f"{p}mlp.experts.{e}.") for e in top)
            else:
                x = x + swiglu(hn, p + "mlp.")
        rows.append(lm_head @ rms(x, t["model.norm.weight"]))
    return np.array(rows)


# ----------------------------------------------------------------------------------------------------------
# Tests

TMP = tempfile.mkdtemp(prefix="qwen3_moe_ref_check_")


def make(name, config, seed, dtype="F32", shards=1, tensors=None):
    folder = os.path.join(TMP, name)
    tensors = tensors if tensors is not None else random_tensors(config, seed)
    write_checkpoint(folder, config, tensors, dtype, shards)
    return folder, tensors


def assert_close(got, want, rel, what):
    err = float(np.max(np.abs(np.asarray(got, np.float64) - want)))
    scale = float(np.max(np.abs(want)))
    assert err <= rel * scale, f"{what}: max abs error {err:.3g} > {rel} x max |want| {scale:.3g}"
    return err / scale


def test_matches_token_by_token_float64_reference_default_rope():
    folder, t = make("default", CONFIG_DEFAULT_ROPE, 1)
    ids = [3, 96, 0, 41, 41, 7, 58, 12, 90, 5, 33]
    rel = assert_close(ref.forward(ref.load_model(folder), ids), naive_logits(CONFIG_DEFAULT_ROPE, t, ids),
                       2e-5, "logits")
    print(f"    relative error vs float64: {rel:.2e}")


def test_matches_token_by_token_float64_reference_yarn_tied_sparse_step_unnormalised():
    folder, t = make("yarn_tied", CONFIG_YARN_TIED, 2)
    ids = [int(i) for i in np.random.default_rng(3).integers(0, 61, 23)]
    rel = assert_close(ref.forward(ref.load_model(folder), ids), naive_logits(CONFIG_YARN_TIED, t, ids),
                       2e-5, "logits")
    print(f"    relative error vs float64: {rel:.2e}")


def test_logits_at_a_position_ignore_later_tokens():
    model = ref.load_model(make("default", CONFIG_DEFAULT_ROPE, 1)[0])
    a = ref.forward(model, [5, 6, 7, 8, 9, 10, 11, 12])
    b = ref.forward(model, [5, 6, 7, 8, 90, 1, 2, 3])
    assert_close(b[:4], a[:4], 1e-6, "positions before the change")
    assert np.max(np.abs(a[4:] - b[4:])) > 1e-2, "later positions should change"


def test_prefix_run_equals_leading_rows_of_longer_run():
    model = ref.load_model(make("yarn_tied", CONFIG_YARN_TIED, 2)[0])
    ids = [int(i) for i in np.random.default_rng(4).integers(0, 61, 19)]
    full = ref.forward(model, ids)
    for k in (1, 2, 7, 18):
        assert_close(ref.forward(model, ids[:k]), full[:k], 1e-6, f"prefix {k}")
        assert_close(ref.forward(model, ids[:k], last_only=True), full[k - 1:k], 1e-6, f"last-only {k}")


def rope_dot(inv_freq, scaling, q, k, m, n):
    cos, sin = ref.rope_cos_sin(inv_freq, scaling, np.array([m, n]))
    qr = ref.apply_rotary_pos_emb(q[None, None], cos[:1], sin[:1])[0, 0]
    kr = ref.apply_rotary_pos_emb(k[None, None], cos[1:], sin[1:])[0, 0]
    return float(np.dot(qr.astype(np.float64), kr))


def test_rope_dot_product_depends_only_on_position_difference():
    rng = np.random.default_rng(5)
    d = 128
    yarn = ref.RopeSetup("yarn", 1e6, factor=4.0, original_max_position_embeddings=32768, attention_factor=1.0)
    for inv_freq, scaling in (ref.rope_inv_freq(ref.RopeSetup("default", 1e6), d), ref.rope_inv_freq(yarn, d)):
        assert scaling == 1.0
        for _ in range(5):
            q, k = rng.standard_normal(d).astype(np.float32), rng.standard_normal(d).astype(np.float32)
            tol = 1e-3 * np.linalg.norm(q) * np.linalg.norm(k)
            for m, n in ((7, 3), (3, 7), (100, 100), (2047, 1)):
                base = rope_dot(inv_freq, scaling, q, k, m, n)
                for shift in (1, 250, 3000):
                    got = rope_dot(inv_freq, scaling, q, k, m + shift, n + shift)
                    assert abs(got - base) <= tol, f"({m},{n})+{shift}: {got} vs {base}"
            assert abs(rope_dot(inv_freq, scaling, q, k, 9, 2) - rope_dot(inv_freq, scaling, q, k, 9, 5)) > tol
    # YaRN's attention factor multiplies cos and sin, so it scales every q.k by its square.
    yarn_scaled = ref.RopeSetup("yarn", 1e6, factor=4.0, original_max_position_embeddings=32768)
    inv_freq, scaling = ref.rope_inv_freq(yarn_scaled, d)
    q, k = rng.standard_normal(d).astype(np.float32), rng.standard_normal(d).astype(np.float32)
    ratio = rope_dot(inv_freq, scaling, q, k, 40, 11) / rope_dot(ref.rope_inv_freq(yarn, d)[0], 1.0, q, k, 40, 11)
    assert abs(ratio - (0.1 * math.log(4) + 1) ** 2) < 1e-5, ratio


def test_yarn_inv_freq_matches_hand_derived_values():
    # head_dim 128, theta 1e6, factor 4, original 32768 (README, "YaRN by hand"):
    # low = floor(128 ln(32768 / (2 pi 32)) / (2 ln 1e6)) = floor(23.60) = 23,
    # high = ceil(128 ln(32768 / (2 pi)) / (2 ln 1e6)) = ceil(39.65) = 40.
    raw = {**CONFIG_DEFAULT_ROPE, "head_dim": 128, "max_position_embeddings": 131072,
           "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}
    rope = ref.config_from_dict(raw).rope
    assert ref.yarn_correction_range(rope, 128) == (23, 40)
    inv_freq, attention_factor = ref.rope_inv_freq(rope, 128)
    assert abs(attention_factor - 1.1386294361119890) < 1e-12, attention_factor
    expected = {0: 1.0, 1: 1e6 ** (-2 / 128), 23: 1e6 ** (-46 / 128), 30: None, 40: 1e6 ** (-80 / 128) / 4,
                63: 1e6 ** (-126 / 128) / 4}
    expected[30] = 1e6 ** (-60 / 128) * (1 - 7 / 17) + 1e6 ** (-60 / 128) / 4 * (7 / 17)
    for i, want in expected.items():
        assert abs(inv_freq[i] / want - 1) < 2e-6, f"inv_freq[{i}] = {inv_freq[i]}, want {want}"
    for i, want in enumerate(hand_inv_freq({"head_dim": 128, "rope_theta": 1e6,
                                             "rope_scaling": raw["rope_scaling"]})[0]):
        assert abs(inv_freq[i] / want - 1) < 2e-6, f"inv_freq[{i}]"
    # A factor absent from rope_scaling comes from max_position_embeddings / original.
    derived = {**raw, "rope_scaling": {"rope_type": "yarn", "original_max_position_embeddings": 32768}}
    assert ref.config_from_dict(derived).rope.factor == 4.0


def test_router_weights_sum_to_one_only_when_normalised():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((13, 24)).astype(np.float32)
    router = (0.1 * rng.standard_normal((9, 24))).astype(np.float32)
    logits, ids, w = ref.route(x, router, 4, True)
    assert np.allclose(w.sum(-1), 1.0, atol=1e-6)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    for row in range(13):
        assert set(ids[row]) == set(np.argsort(-probs[row])[:4]), "top-k must be the largest probabilities"
        assert np.all(np.diff(w[row]) <= 0), "weights come largest first"
    _, ids_raw, w_raw = ref.route(x, router, 4, False)
    assert np.array_equal(ids, ids_raw)
    assert np.all(w_raw.sum(-1) < 1 - 1e-3)
    assert np.allclose(w_raw, np.take_along_axis(probs, ids, -1), atol=1e-6)


def test_bf16_and_f16_checkpoints_read_as_their_exact_float32_values():
    t = random_tensors(CONFIG_DEFAULT_ROPE, 7)
    rounded = {n: bf16_round(v) for n, v in t.items()}
    ids = [1, 2, 3, 50, 60]
    f32 = ref.forward(ref.load_model(make("bf16_as_f32", CONFIG_DEFAULT_ROPE, 0, tensors=rounded)[0]), ids)
    bf16 = ref.forward(ref.load_model(make("bf16", CONFIG_DEFAULT_ROPE, 0, "BF16", tensors=t)[0]), ids)
    assert np.array_equal(f32, bf16), "BF16 must widen exactly"
    halves = {n: v.astype(np.float16).astype(np.float32) for n, v in t.items()}
    f16_as_f32 = ref.forward(ref.load_model(make("f16_as_f32", CONFIG_DEFAULT_ROPE, 0, tensors=halves)[0]), ids)
    f16 = ref.forward(ref.load_model(make("f16", CONFIG_DEFAULT_ROPE, 0, "F16", tensors=t)[0]), ids)
    assert np.array_equal(f16_as_f32, f16)


def test_sharded_checkpoint_equals_single_file():
    folder, t = make("default", CONFIG_DEFAULT_ROPE, 1)
    sharded, _ = make("sharded", CONFIG_DEFAULT_ROPE, 0, shards=3, tensors=t)
    assert len([f for f in os.listdir(sharded) if f.endswith(".safetensors")]) == 3
    ids = [9, 8, 7]
    assert np.array_equal(ref.forward(ref.load_model(folder), ids), ref.forward(ref.load_model(sharded), ids))


def test_moe_layer_selection_follows_mlp_only_layers_and_sparse_step():
    def moe_layers(**over):
        cfg = ref.config_from_dict({**CONFIG_DEFAULT_ROPE, "num_hidden_layers": 6, **over})
        return [i for i in range(6) if cfg.layer_is_moe(i)]
    assert moe_layers(mlp_only_layers=[], decoder_sparse_step=1) == [0, 1, 2, 3, 4, 5]
    assert moe_layers(mlp_only_layers=[0, 4], decoder_sparse_step=1) == [1, 2, 3, 5]
    assert moe_layers(mlp_only_layers=[], decoder_sparse_step=2) == [1, 3, 5]
    assert moe_layers(mlp_only_layers=[5], decoder_sparse_step=3) == [2]
    assert moe_layers(num_experts=0) == []


def run_cli(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)


def test_cli_writes_logits_and_greedy_ids_consistent_with_forward():
    folder, _ = make("yarn_tied", CONFIG_YARN_TIED, 2)
    logits_path, greedy_path = os.path.join(TMP, "logits.npy"), os.path.join(TMP, "greedy.json")
    ids = [4, 40, 17, 17, 2]
    r = run_cli("--model", folder, "--ids", ",".join(map(str, ids)), "--logits-out", logits_path,
                "--greedy", "6", "--greedy-out", greedy_path)
    assert r.returncode == 0, r.stderr
    logits = np.load(logits_path)
    assert logits.dtype == np.float32 and logits.shape == (5, 61)
    assert np.array_equal(logits, ref.forward(ref.load_model(folder), ids))
    with open(greedy_path) as f:
        generated = json.load(f)
    assert len(generated) == 6 and generated[0] == int(np.argmax(logits[-1]))
    longer = ref.forward(ref.load_model(folder), ids + generated)
    assert [int(i) for i in np.argmax(longer[len(ids) - 1:-1], axis=-1)] == generated


def test_trace_names_every_intermediate():
    folder, _ = make("default", CONFIG_DEFAULT_ROPE, 1)
    trace_path = os.path.join(TMP, "trace.npz")
    r = run_cli("--model", folder, "--ids", "1,2,3,4", "--trace-out", trace_path)
    assert r.returncode == 0, r.stderr
    trace = np.load(trace_path)
    for name in ("embed", "rope_cos", "layers.0.q_rope", "layers.0.router_logits", "layers.0.topk_ids",
                 "layers.2.topk_weights", "layers.1.after_attention", "layers.2.out", "final_norm", "logits"):
        assert name in trace, name
    assert "layers.1.router_logits" not in trace, "layer 1 is dense"
    assert trace["layers.0.q_rope"].shape == (4, 6, 16)


def test_cli_reports_bad_input_as_an_error_without_traceback():
    folder, t = make("default", CONFIG_DEFAULT_ROPE, 1)
    cases = {"id out of range": (folder, "1,97")}
    cases["ids not numbers"] = (folder, "1,x")
    truncated = os.path.join(TMP, "truncated")
    write_checkpoint(truncated, CONFIG_DEFAULT_ROPE, t)
    path = os.path.join(truncated, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    cases["truncated data"] = (truncated, "1")
    bad_header = os.path.join(TMP, "bad_header")
    write_checkpoint(bad_header, CONFIG_DEFAULT_ROPE, t)
    with open(os.path.join(bad_header, "model.safetensors"), "r+b") as f:
        f.write((1 << 40).to_bytes(8, "little"))
    cases["header length past end"] = (bad_header, "1")
    missing = {n: v for n, v in t.items() if n != "model.layers.2.mlp.experts.4.up_proj.weight"}
    cases["missing tensor"] = (make("missing", CONFIG_DEFAULT_ROPE, 0, tensors=missing)[0], "1")
    wrong_shape = {**t, "model.norm.weight": np.ones(47, np.float32)}
    cases["wrong shape"] = (make("wrong_shape", CONFIG_DEFAULT_ROPE, 0, tensors=wrong_shape)[0], "1")
    cases["bad config"] = (make("bad_config", {**CONFIG_DEFAULT_ROPE, "num_key_value_heads": 4}, 0, tensors=t)[0],
                           "1")
    cases["no such folder"] = (os.path.join(TMP, "nowhere"), "1")
    for what, (model_dir, ids) in cases.items():
        r = run_cli("--model", model_dir, "--ids", ids)
        assert r.returncode == 2, f"{what}: rc {r.returncode}, stderr {r.stderr}"
        assert r.stderr.startswith("error:") and "Traceback" not in r.stderr, f"{what}: {r.stderr}"


def perf_bench_like_prompt_64_plus_32_greedy():
    config = {**CONFIG_DEFAULT_ROPE, "vocab_size": 151936, "hidden_size": 256, "intermediate_size": 512,
              "moe_intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 64, "num_experts": 16, "num_experts_per_tok": 4,
              "mlp_only_layers": [], "max_position_embeddings": 131072,
              "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}
    folder, _ = make("perf", config, 8, "BF16")
    ids = ",".join(str(i) for i in np.random.default_rng(9).integers(0, 151669, 64))
    start = time.time()
    r = run_cli("--model", folder, "--ids", ids, "--logits-out", os.path.join(TMP, "perf.npy"), "--greedy", "32",
                "--greedy-out", os.path.join(TMP, "perf.json"))
    seconds = time.time() - start
    assert r.returncode == 0, r.stderr
    print(f"    hidden 256, 4 layers, 16 experts, vocab 151936: 64-token prompt + 32 greedy in {seconds:.1f} s")
    assert seconds < 60, seconds


def main():
    tests = [(n, f) for n, f in globals().items() if n.startswith("test_") and callable(f)]
    if "--perf" in sys.argv[1:]:
        tests.append(("perf_bench_like_prompt_64_plus_32_greedy", perf_bench_like_prompt_64_plus_32_greedy))
    passed = failed = 0
    for name, fn in tests:
        try:
            fn()
            passed += 1
            print(f"PASS {name}")
        except Exception:  # noqa: BLE001 - report every failure and keep going
            failed += 1
            print(f"FAIL {name}\n{traceback.format_exc()}")
    print(f"{passed} passed, {failed} failed")
    shutil.rmtree(TMP, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
