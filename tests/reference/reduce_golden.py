#!/usr/bin/python3
"""Reduces the NumPy reference's full logits to the golden file the C++ engine test reads.

Full logits are [n, 151936] float32 (600 KB a position); the golden file keeps, per position, the logits
of a fixed spread of vocabulary columns, the top-5 ids, and the position's logit range, plus the greedy
continuation. That is enough to bound the engine's error (max |diff| over the kept columns, relative to
the range) and to pin argmax/top-5, at a size that fits in the repository.
"""
import argparse
import json

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--logits", required=True, help=".npy written by qwen3_moe_ref.py --logits-out")
    ap.add_argument("--greedy", required=True, help="JSON ids written by qwen3_moe_ref.py --greedy-out")
    ap.add_argument("--ids", required=True, help="the prompt ids, comma separated")
    ap.add_argument("--model", required=True, help="JSON describing how the model was made (make-model args)")
    ap.add_argument("--column-step", type=int, default=397)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    logits = np.load(args.logits)
    with open(args.greedy) as f:
        greedy = json.load(f)
    columns = list(range(0, logits.shape[1], args.column_step))
    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    golden = {
        "source": "tests/reference/qwen3_moe_ref.py (NumPy, from transformers' modeling_qwen3_moe.py)",
        "model": json.loads(args.model),
        "ids": [int(x) for x in args.ids.split(",")],
        "vocab_size": int(logits.shape[1]),
        "columns": columns,
        "logits": [[float("%.8g" % v) for v in row[columns]] for row in logits],
        "top5": top5.tolist(),
        "logit_min": [float(v) for v in logits.min(axis=1)],
        "logit_max": [float(v) for v in logits.max(axis=1)],
        "greedy": greedy,
    }
    with open(args.out, "w") as f:
        json.dump(golden, f)
        f.write("\n")


if __name__ == "__main__":
    main()
