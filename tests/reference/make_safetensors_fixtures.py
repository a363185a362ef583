#!/usr/bin/env python3
"""Writes the small safetensors fixtures in tests/engine/data/safetensors/ with nothing but the standard
library (struct + json), so the C++ reader is tested against files it did not write itself.

Format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N, N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the data; offsets
are relative to the start of the data. The values are simple formulas that tests/engine/safetensors_test.cpp
recomputes:
  single_f32.safetensors   a: F32 [2, 3] = 0.5 * i - 1;  b: F32 [4] = i * i;  scalar: F32 [] = 3.25;
                           ids: I32 [3] = [1, -2, 3]; header not padded, data order differs from header order
  single_bf16.safetensors  w: BF16 [3, 4] = 0.25 * i - 1;  norm: BF16 [4] = [1, 1.5, -2, 0.125];
                           header padded with spaces to 8 bytes as Hugging Face does
  sharded/                 model-00001-of-00002: model.embed_tokens.weight BF16 [4, 2] = i - 3,
                           model.norm.weight F32 [2] = [1, 2]; model-00002-of-00002: lm_head.weight
                           BF16 [4, 2] = 0.5 * i; plus model.safetensors.index.json
Run from anywhere: python3 tests/reference/make_safetensors_fixtures.py
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "engine", "data", "safetensors")


def bf16_bytes(values):
    # Every value here is exact in bfloat16, so truncating the float32 bits is exact too.
    out = b""
    for v in values:
        (bits,) = struct.unpack("<I", struct.pack("<f", v))
        assert bits & 0xFFFF == 0, v
        out += struct.pack("<H", bits >> 16)
    return out


def f32_bytes(values):
    return struct.pack("<%df" % len(values), *values)


def i32_bytes(values):
    return struct.pack("<%di" % len(values), *values)


def write(path, tensors, data_order, metadata=None, pad=False):
    """tensors: {name: (dtype, shape, bytes)} in header order; data_order: names in data order."""
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    offsets = {}
    pos = 0
    for name in data_order:
        size = len(tensors[name][2])
        offsets[name] = [pos, pos + size]
        pos += size
    for name, (dtype, shape, _) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": offsets[name]}
    text = json.dumps(header).encode("utf-8")
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in data_order:
            f.write(tensors[name][2])


def main():
    os.makedirs(os.path.join(OUT, "sharded"), exist_ok=True)
    write(
        os.path.join(OUT, "single_f32.safetensors"),
        {
            "a": ("F32", [2, 3], f32_bytes([0.5 * i - 1 for i in range(6)])),
            "b": ("F32", [4], f32_bytes([float(i * i) for i in range(4)])),
            "scalar": ("F32", [], f32_bytes([3.25])),
            "ids": ("I32", [3], i32_bytes([1, -2, 3])),
        },
        data_order=["ids", "b", "a", "scalar"],
        metadata={"format": "pt", "producer": "make_safetensors_fixtures.py"},
    )
    write(
        os.path.join(OUT, "single_bf16.safetensors"),
        {
            "w": ("BF16", [3, 4], bf16_bytes([0.25 * i - 1 for i in range(12)])),
            "norm": ("BF16", [4], bf16_bytes([1.0, 1.5, -2.0, 0.125])),
        },
        data_order=["w", "norm"],
        metadata={"format": "pt"},
        pad=True,
    )
    shard1 = "model-00001-of-00002.safetensors"
    shard2 = "model-00002-of-00002.safetensors"
    first = {
        "model.embed_tokens.weight": ("BF16", [4, 2], bf16_bytes([float(i - 3) for i in range(8)])),
        "model.norm.weight": ("F32", [2], f32_bytes([1.0, 2.0])),
    }
    second = {"lm_head.weight": ("BF16", [4, 2], bf16_bytes([0.5 * i for i in range(8)]))}
    write(os.path.join(OUT, "sharded", shard1), first, list(first), {"format": "pt"}, pad=True)
    write(os.path.join(OUT, "sharded", shard2), second, list(second), {"format": "pt"}, pad=True)
    weight_map = {name: shard1 for name in first}
    weight_map.update({name: shard2 for name in second})
    total = sum(len(t[2]) for t in list(first.values()) + list(second.values()))
    with open(os.path.join(OUT, "sharded", "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
