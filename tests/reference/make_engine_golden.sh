#!/usr/bin/env bash
# Regenerates tests/engine/data/golden/*.json: writes each checkpoint with `agentserve make-model`, runs the
# NumPy reference (tests/reference/qwen3_moe_ref.py) on it, and reduces the logits with reduce_golden.py.
# Usage: [GOLDEN_ONLY="tiny-f32 ..."] tests/reference/make_engine_golden.sh [BUILD_DIR]
# (a few minutes: the reference recomputes the whole sequence for each greedy token)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-$root/build}/server/agentserve
out=$root/tests/engine/data/golden
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

# 40 prompt ids: a real sentence through the tokenizer, then ids spread over the whole vocabulary.
ids="785,3974,13876,38835,34208,916,279,15678,5562,13,220,16,17,18,151644,872,198,9707,0,151645"
ids="$ids,5,77,1024,4096,9999,20000,33333,50000,65535,77777,88888,99999,100000,120000,131071,140000,150000,151000,151642,7"

medium_config='{"architectures":["Qwen3MoeForCausalLM"],"model_type":"qwen3_moe","hidden_size":128,
"num_hidden_layers":3,"num_attention_heads":8,"num_key_value_heads":2,"head_dim":32,"num_experts":16,
"num_experts_per_tok":4,"moe_intermediate_size":64,"intermediate_size":192,"mlp_only_layers":[1],
"decoder_sparse_step":1,"norm_topk_prob":false,"rope_theta":1000000.0,"rms_norm_eps":1e-06,
"max_position_embeddings":131072,"rope_scaling":{"rope_type":"yarn","factor":4.0,
"original_max_position_embeddings":32768},"vocab_size":151936,"tie_word_embeddings":false,
"torch_dtype":"float32","attention_bias":false,"eos_token_id":151645,"bos_token_id":151643}'

make_one() {  # name, model-description JSON, make-model args...
  local name=$1 desc=$2; shift 2
  if [ -n "${GOLDEN_ONLY:-}" ] && [[ " $GOLDEN_ONLY " != *" $name "* ]]; then return 0; fi
  echo "golden $name: make-model $*" >&2
  "$bin" make-model --out "$work/$name" "$@" >/dev/null
  /usr/bin/python3 "$root/tests/reference/qwen3_moe_ref.py" --model "$work/$name" --ids "$ids" \
    --logits-out "$work/$name.npy" --greedy 32 --greedy-out "$work/$name.greedy.json"
  /usr/bin/python3 "$root/tests/reference/reduce_golden.py" --logits "$work/$name.npy" \
    --greedy "$work/$name.greedy.json" --ids "$ids" --model "$desc" --out "$out/$name.json"
}

make_one tiny-f32 '{"preset":"tiny","dtype":"f32","seed":1}' --preset tiny --dtype f32 --seed 1
make_one tiny-bf16 '{"preset":"tiny","dtype":"bf16","seed":2}' --preset tiny --dtype bf16 --seed 2
echo "$medium_config" > "$work/medium-config.json"
make_one medium-f32 "{\"name\":\"medium\",\"dtype\":\"f32\",\"seed\":3,\"config\":$(tr -d '\n' < "$work/medium-config.json")}" \
  --config "$work/medium-config.json" --dtype f32 --seed 3
echo "wrote $out" >&2
