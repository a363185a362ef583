#!/usr/bin/python3
"""NumPy reference of the Hugging Face Qwen3-MoE forward pass: the oracle for agentserve's golden tests.

It mirrors transformers' models/qwen3_moe/modeling_qwen3_moe.py and modeling_rope_utils.py step by step
(see tests/reference/README.md for the map), reads config.json and safetensors itself, and computes in
float32 the way Hugging Face does with torch_dtype=float32. It must never import torch, transformers,
safetensors or anything of agentserve's, never guess at a config it does not understand (it refuses with
a message instead), and never trade the plain order of Hugging Face's arithmetic for speed.

Usage: qwen3_moe_ref.py --model DIR --ids 1,2,3 [--logits-out F.npy] [--greedy N --greedy-out F.json]
                        [--trace-out F.npz]
"""

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np

F32 = np.float32


class RefError(Exception):
    """A problem with the model folder or the arguments; the CLI reports it without a traceback."""


# ----------------------------------------------------------------------------------------------------------
# Config (configuration_qwen3_moe.py: Qwen3MoeConfig). Defaults are Hugging Face's, so a key a checkpoint
# leaves out means what it means to transformers.


@dataclass
class RopeSetup:
    rope_type: str  # "default" or "yarn"
    theta: float
    factor: float = 1.0
    original_max_position_embeddings: int = 0
    attention_factor: float | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True


@dataclass
class ModelConfig:
    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 6144
    num_hidden_layers: int = 24
    num_attention_heads: int = 32
    num_key_value_heads: int = 4
    head_dim: int = 0  # 0 until resolved: hidden_size // num_attention_heads when absent
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    decoder_sparse_step: int = 1
    moe_intermediate_size: int = 768
    num_experts_per_tok: int = 8
    num_experts: int = 128
    norm_topk_prob: bool = False
    mlp_only_layers: list = field(default_factory=list)
    rope: RopeSetup = field(default_factory=lambda: RopeSetup("default", 10000.0))

    def layer_is_moe(self, layer_idx):
        """Qwen3MoeDecoderLayer.__init__: which layers get Qwen3MoeSparseMoeBlock instead of Qwen3MoeMLP."""
        return (layer_idx not in self.mlp_only_layers and self.num_experts > 0
                and (layer_idx + 1) % self.decoder_sparse_step == 0)


def _rope_setup(raw, max_position_embeddings):
    # Older configs carry rope_theta + rope_scaling; transformers v5 folds both into rope_parameters.
    params = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(scaling, dict):
        raise RefError("rope_scaling / rope_parameters must be JSON objects")
    merged = {**scaling, **params}
    theta = float(merged.get("rope_theta", raw.get("rope_theta", 10000.0)))
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type == "default":
        return RopeSetup("default", theta)
    if rope_type != "yarn":
        raise RefError(f"rope type {rope_type!r} is not mirrored by this reference (default and yarn are)")
    original = merged.get("original_max_position_embeddings")
    factor = merged.get("factor")
    if factor is None:
        if original is None:
            raise RefError("yarn needs rope_scaling.factor or original_max_position_embeddings")
        factor = max_position_embeddings / original
    elif original is not None and max_position_embeddings / original != factor:
        # transformers 4.51-4.57 replaced the explicit factor by this ratio; newer versions keep it.
        print(f"warning: yarn factor {factor} != max_position_embeddings / original_max_position_embeddings "
              f"= {max_position_embeddings / original}; using the explicit factor like transformers v5",
              file=sys.stderr)
    return RopeSetup("yarn", theta, factor=float(factor),
                     original_max_position_embeddings=int(original or max_position_embeddings),
                     attention_factor=merged.get("attention_factor"),
                     beta_fast=float(merged.get("beta_fast") or 32), beta_slow=float(merged.get("beta_slow") or 1),
                     mscale=merged.get("mscale"), mscale_all_dim=merged.get("mscale_all_dim"),
                     truncate=bool(merged.get("truncate", True)))


def config_from_dict(raw):
    cfg = ModelConfig()
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "max_position_embeddings", "decoder_sparse_step",
                 "moe_intermediate_size", "num_experts_per_tok", "num_experts"):
        if raw.get(name) is not None:
            if not isinstance(raw[name], int) or raw[name] < 0:
                raise RefError(f"config {name} must be a non-negative integer, got {raw[name]!r}")
            setattr(cfg, name, raw[name])
    for name in ("tie_word_embeddings", "norm_topk_prob"):
        if raw.get(name) is not None:
            setattr(cfg, name, bool(raw[name]))
    cfg.rms_norm_eps = float(raw.get("rms_norm_eps", cfg.rms_norm_eps))
    cfg.mlp_only_layers = list(raw.get("mlp_only_layers") or [])
    cfg.head_dim = int(raw.get("head_dim") or cfg.hidden_size // max(cfg.num_attention_heads, 1))
    cfg.rope = _rope_setup(raw, cfg.max_position_embeddings)

    if raw.get("hidden_act", "silu") != "silu":
        raise RefError(f"hidden_act {raw['hidden_act']!r} is not mirrored (silu is)")
    if raw.get("attention_bias", False):
        raise RefError("attention_bias true is not mirrored (Qwen3-MoE ships without biases)")
    if raw.get("use_sliding_window", False):
        raise RefError("use_sliding_window true is not mirrored (Qwen3-MoE ships with it off)")
    if float(raw.get("partial_rotary_factor", 1.0)) != 1.0:
        raise RefError("partial_rotary_factor != 1 is not mirrored")
    if min(cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size) <= 0:
        raise RefError("heads, kv heads, head_dim and hidden_size must be positive")
    if cfg.num_attention_heads % cfg.num_key_value_heads != 0:
        raise RefError("num_attention_heads must be a multiple of num_key_value_heads")
    if cfg.head_dim % 2 != 0:
        raise RefError("head_dim must be even for rotate-half RoPE")
    if cfg.decoder_sparse_step <= 0:
        raise RefError("decoder_sparse_step must be positive")
    if cfg.num_experts > 0 and not 0 < cfg.num_experts_per_tok <= cfg.num_experts:
        raise RefError("num_experts_per_tok must be in [1, num_experts]")
    return cfg


def load_config(model_dir):
    path = os.path.join(model_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise RefError(f"cannot read {path}: {e}") from None
    if not isinstance(raw, dict):
        raise RefError(f"{path} is not a JSON object")
    return config_from_dict(raw)


# ----------------------------------------------------------------------------------------------------------
# Safetensors: 8-byte little-endian header length, JSON header {name: {dtype, shape, data_offsets}}, then
# the byte buffer the offsets index. Every tensor comes back as float32.

_DTYPES = {"F32": (4, "<f4"), "F16": (2, "<f2"), "BF16": (2, "<u2")}


def read_safetensors(path, names=None):
    """Tensors of one file as float32 arrays; `names` limits which are decoded."""
    try:
        data = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as e:
        raise RefError(f"cannot open {path}: {e}") from None
    if data.size < 8:
        raise RefError(f"{path}: shorter than the 8-byte header length")
    header_len = int(data[:8].view("<u8")[0])
    if header_len > data.size - 8:
        raise RefError(f"{path}: header length {header_len} runs past the end of the file")
    try:
        header = json.loads(bytes(data[8:8 + header_len]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise RefError(f"{path}: header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise RefError(f"{path}: header is not a JSON object")
    buffer = data[8 + header_len:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__" or (names is not None and name not in names):
            continue
        tensors[name] = _decode_tensor(path, name, info, buffer)
    return tensors


def _decode_tensor(path, name, info, buffer):
    try:
        dtype, shape, (begin, end) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
    except (KeyError, TypeError, ValueError):
        raise RefError(f"{path}: tensor {name} has a malformed header entry") from None
    if dtype not in _DTYPES:
        raise RefError(f"{path}: tensor {name} has dtype {dtype}; F32, F16 and BF16 are read")
    itemsize, np_type = _DTYPES[dtype]
    count = math.prod(shape)
    if min(shape, default=1) < 0 or not 0 <= begin <= end <= buffer.size or end - begin != count * itemsize:
        raise RefError(f"{path}: tensor {name} ({dtype} {shape}) has bad data_offsets [{begin}, {end}] "
                       f"for a {buffer.size}-byte buffer")
    raw = np.frombuffer(buffer[begin:end].tobytes(), dtype=np_type)
    if dtype == "BF16":
        # bf16 is the top half of an IEEE float32: widening is a 16-bit shift, exact.
        values = (raw.astype(np.uint32) << 16).view(F32)
    else:
        values = raw.astype(F32)
    return values.reshape(shape)


def load_checkpoint_tensors(model_dir):
    """All tensors of a checkpoint: model.safetensors, or the shards model.safetensors.index.json names."""
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index_path):
        try:
            with open(index_path, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            shards = {}
            for name, shard in weight_map.items():
                shards.setdefault(shard, set()).add(name)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise RefError(f"cannot read {index_path}: {e}") from None
        tensors = {}
        for shard, names in sorted(shards.items()):
            if os.path.basename(shard) != shard:
                raise RefError(f"{index_path}: shard name {shard!r} must be a plain file name")
            found = read_safetensors(os.path.join(model_dir, shard), names)
            missing = names - found.keys()
            if missing:
                raise RefError(f"{shard} lacks {sorted(missing)[0]} (and {len(missing) - 1} more) named by the index")
            tensors.update(found)
        return tensors
    single = os.path.join(model_dir, "model.safetensors")
    if not os.path.exists(single):
        raise RefError(f"{model_dir} has neither model.safetensors nor model.safetensors.index.json")
    return read_safetensors(single)


# ----------------------------------------------------------------------------------------------------------
# Weights, named and shaped as Qwen3MoeForCausalLM's state dict.


@dataclass
class LayerWeights:
    input_layernorm: np.ndarray
    q_proj: np.ndarray
    k_proj: np.ndarray
    v_proj: np.ndarray
    o_proj: np.ndarray
    q_norm: np.ndarray
    k_norm: np.ndarray
    post_attention_layernorm: np.ndarray
    router: np.ndarray | None  # mlp.gate [num_experts, hidden]; None for a dense layer
    gate_proj: list  # one [inter, hidden] per expert, or a single one for a dense layer
    up_proj: list
    down_proj: list


@dataclass
class Model:
    config: ModelConfig
    embed_tokens: np.ndarray
    layers: list
    norm: np.ndarray
    lm_head: np.ndarray
    inv_freq: np.ndarray
    attention_scaling: float


def load_model(model_dir):
    cfg = load_config(model_dir)
    tensors = load_checkpoint_tensors(model_dir)

    def take(name, shape):
        if name not in tensors:
            raise RefError(f"checkpoint lacks {name}")
        t = tensors.pop(name)
        if list(t.shape) != list(shape):
            raise RefError(f"{name} has shape {list(t.shape)}, config implies {list(shape)}")
        return t

    h, d = cfg.hidden_size, cfg.head_dim
    q_out, kv_out = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
    embed = take("model.embed_tokens.weight", (cfg.vocab_size, h))
    layers = []
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        if cfg.layer_is_moe(i):
            inter, router = cfg.moe_intermediate_size, take(p + "mlp.gate.weight", (cfg.num_experts, h))
            prefixes = [f"{p}mlp.experts.{e}." for e in range(cfg.num_experts)]
        else:
            inter, router, prefixes = cfg.intermediate_size, None, [p + "mlp."]
        layers.append(LayerWeights(
            input_layernorm=take(p + "input_layernorm.weight", (h,)),
            q_proj=take(p + "self_attn.q_proj.weight", (q_out, h)),
            k_proj=take(p + "self_attn.k_proj.weight", (kv_out, h)),
            v_proj=take(p + "self_attn.v_proj.weight", (kv_out, h)),
            o_proj=take(p + "self_attn.o_proj.weight", (h, q_out)),
            q_norm=take(p + "self_attn.q_norm.weight", (d,)),
            k_norm=take(p + "self_attn.k_norm.weight", (d,)),
            post_attention_layernorm=take(p + "post_attention_layernorm.weight", (h,)),
            router=router,
            gate_proj=[take(x + "gate_proj.weight", (inter, h)) for x in prefixes],
            up_proj=[take(x + "up_proj.weight", (inter, h)) for x in prefixes],
            down_proj=[take(x + "down_proj.weight", (h, inter)) for x in prefixes]))
    norm = take("model.norm.weight", (h,))
    if cfg.tie_word_embeddings:
        # _tied_weights_keys: lm_head shares the embedding; a stored copy is ignored like transformers does.
        tensors.pop("lm_head.weight", None)
        lm_head = embed
    else:
        lm_head = take("lm_head.weight", (cfg.vocab_size, h))
    if tensors:
        print(f"warning: {len(tensors)} unused tensors, e.g. {sorted(tensors)[0]}", file=sys.stderr)
    inv_freq, attention_scaling = rope_inv_freq(cfg.rope, d)
    return Model(cfg, embed, layers, norm, lm_head, inv_freq, attention_scaling)


# ----------------------------------------------------------------------------------------------------------
# RoPE (modeling_rope_utils.py: _compute_default_rope_parameters, _compute_yarn_parameters;
# modeling_qwen3_moe.py: Qwen3MoeRotaryEmbedding.forward, rotate_half, apply_rotary_pos_emb).


def default_inv_freq(dim, theta):
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(F32) / F32(dim)
    return (F32(1.0) / (F32(theta) ** exponents)).astype(F32)


def yarn_correction_range(rope, dim):
    """find_correction_range: the dims between which YaRN ramps from original to interpolated frequency."""
    def correction_dim(num_rotations):
        return (dim * math.log(rope.original_max_position_embeddings / (num_rotations * 2 * math.pi))
                / (2 * math.log(rope.theta)))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, dim - 1)


def yarn_attention_factor(rope):
    def get_mscale(scale, mscale=1.0):
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    if rope.attention_factor is not None:
        return float(rope.attention_factor)
    if rope.mscale and rope.mscale_all_dim:
        return float(get_mscale(rope.factor, rope.mscale) / get_mscale(rope.factor, rope.mscale_all_dim))
    return get_mscale(rope.factor)


def yarn_inv_freq(rope, dim):
    pos_freqs = F32(rope.theta) ** (np.arange(0, dim, 2).astype(F32) / F32(dim))
    inv_freq_extrapolation = F32(1.0) / pos_freqs
    inv_freq_interpolation = F32(1.0) / (F32(rope.factor) * pos_freqs)
    low, high = yarn_correction_range(rope, dim)
    if low == high:
        high += 0.001  # linear_ramp_factor's guard against a zero-width ramp
    ramp = np.clip((np.arange(dim // 2, dtype=F32) - F32(low)) / F32(high - low), F32(0), F32(1))
    extrapolation_factor = F32(1) - ramp
    return (inv_freq_interpolation * (F32(1) - extrapolation_factor)
            + inv_freq_extrapolation * extrapolation_factor).astype(F32)


def rope_inv_freq(rope, dim):
    """(inv_freq [dim/2] float32, attention_scaling) as ROPE_INIT_FUNCTIONS[rope_type] returns them."""
    if rope.rope_type == "yarn":
        return yarn_inv_freq(rope, dim), yarn_attention_factor(rope)
    return default_inv_freq(dim, rope.theta), 1.0


def rope_cos_sin(inv_freq, attention_scaling, positions):
    """cos, sin [n, dim]: angle = position * inv_freq in float32, duplicated for the rotate-half layout."""
    freqs = positions.astype(F32)[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb) * F32(attention_scaling), np.sin(emb) * F32(attention_scaling)


def rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary_pos_emb(x, cos, sin):
    """x [n, heads, dim]; cos/sin [n, dim] broadcast over heads."""
    return x * cos[:, None, :] + rotate_half(x) * sin[:, None, :]


# ----------------------------------------------------------------------------------------------------------
# Layers (modeling_qwen3_moe.py).


def rms_norm(x, weight, eps):
    """Qwen3MoeRMSNorm: x * rsqrt(mean(x^2) + eps) in float32, then times the weight."""
    x = x.astype(F32)
    variance = np.mean(x * x, axis=-1, keepdims=True, dtype=F32)
    return weight * (x * (F32(1) / np.sqrt(variance + F32(eps))))


def linear(x, weight):
    """nn.Linear without bias: weight is [out, in]."""
    return x @ weight.T


def silu(x):
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for x << 0, giving the right limit -0
        return x / (F32(1) + np.exp(-x))


def softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True, dtype=F32)


def attention(layer, cfg, x, cos, sin, trace=None, prefix=""):
    """Qwen3MoeAttention + eager_attention_forward over n tokens at positions 0..n-1 with a causal mask."""
    n, d = x.shape[0], cfg.head_dim
    kv_heads, group = cfg.num_key_value_heads, cfg.num_attention_heads // cfg.num_key_value_heads
    # q_norm/k_norm normalise each head over head_dim, before RoPE.
    q = rms_norm(linear(x, layer.q_proj).reshape(n, -1, d), layer.q_norm, cfg.rms_norm_eps)
    k = rms_norm(linear(x, layer.k_proj).reshape(n, -1, d), layer.k_norm, cfg.rms_norm_eps)
    v = linear(x, layer.v_proj).reshape(n, -1, d)
    q, k = apply_rotary_pos_emb(q, cos, sin), apply_rotary_pos_emb(k, cos, sin)
    if trace is not None:
        trace[prefix + "q_rope"], trace[prefix + "k_rope"], trace[prefix + "v"] = q, k, v
    # repeat_kv: query head h reads kv head h // group, so heads split as [kv_heads, group].
    q = q.transpose(1, 0, 2).reshape(kv_heads, group, n, d)
    k = k.transpose(1, 0, 2)[:, None]
    v = v.transpose(1, 0, 2)[:, None]
    scores = (q @ k.transpose(0, 1, 3, 2)) * F32(d ** -0.5)
    causal = np.where(np.tri(n, dtype=bool), F32(0), np.finfo(F32).min)
    probs = softmax(scores + causal)
    out = (probs @ v).reshape(cfg.num_attention_heads, n, d).transpose(1, 0, 2).reshape(n, -1)
    return linear(out, layer.o_proj)


def mlp(x, gate_proj, up_proj, down_proj):
    """Qwen3MoeMLP: down(silu(gate(x)) * up(x))."""
    return linear(silu(linear(x, gate_proj)) * linear(x, up_proj), down_proj)


def route(x, router, top_k, norm_topk_prob):
    """Router of Qwen3MoeSparseMoeBlock: (logits [n, E], top-k expert ids [n, k], their weights [n, k]).

    Softmax over all experts in float32, top-k by probability (largest first), renormalised to sum 1
    when norm_topk_prob."""
    logits = linear(x, router)
    probs = softmax(logits.astype(F32))
    ids = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]
    weights = np.take_along_axis(probs, ids, axis=-1)
    if norm_topk_prob:
        weights = weights / np.sum(weights, axis=-1, keepdims=True, dtype=F32)
    return logits, ids, weights.astype(F32)


def sparse_moe(layer, cfg, x, trace=None, prefix=""):
    """Qwen3MoeSparseMoeBlock: each token's top-k experts, weighted and summed in expert order."""
    logits, ids, weights = route(x, layer.router, cfg.num_experts_per_tok, cfg.norm_topk_prob)
    if trace is not None:
        trace[prefix + "router_logits"], trace[prefix + "topk_ids"], trace[prefix + "topk_weights"] = \
            logits, ids, weights
    out = np.zeros_like(x)
    # Ascending expert index, like the loop over expert_hit with index_add_, so float32 sums add in
    # Hugging Face's order.
    for e in np.unique(ids):
        tokens, slots = np.nonzero(ids == e)
        y = mlp(x[tokens], layer.gate_proj[e], layer.up_proj[e], layer.down_proj[e])
        out[tokens] += y * weights[tokens, slots, None]
    return out


def decoder_layer(layer, cfg, x, cos, sin, trace=None, prefix=""):
    """Qwen3MoeDecoderLayer: pre-norm attention and pre-norm MLP/MoE, each with a residual add."""
    h = x + attention(layer, cfg, rms_norm(x, layer.input_layernorm, cfg.rms_norm_eps), cos, sin, trace, prefix)
    if trace is not None:
        trace[prefix + "after_attention"] = h
    normed = rms_norm(h, layer.post_attention_layernorm, cfg.rms_norm_eps)
    if layer.router is not None:
        ffn = sparse_moe(layer, cfg, normed, trace, prefix)
    else:
        ffn = mlp(normed, layer.gate_proj[0], layer.up_proj[0], layer.down_proj[0])
    out = h + ffn
    if trace is not None:
        trace[prefix + "out"] = out
    return out


def forward(model, ids, last_only=False, trace=None):
    """Qwen3MoeForCausalLM.forward on one sequence at positions 0..n-1: logits [n, vocab] float32
    (only the last row when last_only). `trace`, a dict, receives every named intermediate."""
    cfg = model.config
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0:
        raise RefError("ids must be a non-empty list")
    if ids.min() < 0 or ids.max() >= cfg.vocab_size:
        raise RefError(f"token id out of range [0, {cfg.vocab_size})")
    cos, sin = rope_cos_sin(model.inv_freq, model.attention_scaling, np.arange(ids.size))
    x = model.embed_tokens[ids]
    if trace is not None:
        trace["rope_cos"], trace["rope_sin"], trace["embed"] = cos, sin, x
    for i, layer in enumerate(model.layers):
        x = decoder_layer(layer, cfg, x, cos, sin, trace, f"layers.{i}.")
    x = rms_norm(x[-1:] if last_only else x, model.norm, cfg.rms_norm_eps)
    logits = linear(x, model.lm_head).astype(F32)
    if trace is not None:
        trace["final_norm"], trace["logits"] = x, logits
    return logits


def greedy_decode(model, ids, steps):
    """Greedy continuation of `ids` for `steps` tokens, recomputing the whole sequence at each step."""
    seq, generated = list(ids), []
    for _ in range(steps):
        next_id = int(np.argmax(forward(model, seq, last_only=True)[0]))
        generated.append(next_id)
        seq.append(next_id)
    return generated


# ----------------------------------------------------------------------------------------------------------
# CLI


def parse_ids(text):
    try:
        ids = [int(t) for t in text.split(",") if t.strip() != ""]
    except ValueError:
        raise RefError(f"--ids must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise RefError("--ids is empty")
    return ids


def run(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="folder with config.json and safetensors")
    parser.add_argument("--ids", required=True, help="prompt token ids, comma-separated")
    parser.add_argument("--logits-out", help="write float32 logits [n, vocab] of every prompt position (.npy)")
    parser.add_argument("--greedy", type=int, default=0, help="greedily decode this many more tokens")
    parser.add_argument("--greedy-out", help="write the generated ids as a JSON array")
    parser.add_argument("--trace-out", help="write every named intermediate of the prompt pass (.npz)")
    args = parser.parse_args(argv)
    if args.greedy < 0:
        raise RefError("--greedy must be >= 0")
    if args.greedy_out and args.greedy == 0:
        raise RefError("--greedy-out needs --greedy N with N > 0")

    ids = parse_ids(args.ids)
    model = load_model(args.model)
    trace = {} if args.trace_out else None
    logits = forward(model, ids, trace=trace)
    print(f"prompt {len(ids)} tokens, vocab {logits.shape[1]}, last-position argmax {int(np.argmax(logits[-1]))}")
    if args.logits_out:
        np.save(args.logits_out, logits)
    if trace is not None:
        np.savez(args.trace_out, **trace)
    if args.greedy:
        generated = greedy_decode(model, ids, args.greedy)
        print("generated " + ",".join(map(str, generated)))
        if args.greedy_out:
            with open(args.greedy_out, "w", encoding="utf-8") as f:
                json.dump(generated, f)
                f.write("\n")


def main():
    try:
        run(sys.argv[1:])
    except RefError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
