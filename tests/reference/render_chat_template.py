#!/usr/bin/python3
"""Render Qwen3's chat template the way transformers' apply_chat_template does, for the C++ golden test.

The template is the `chat_template` string of a model's tokenizer_config.json. The Jinja environment mirrors
transformers (utils/chat_template_utils.py): an ImmutableSandboxedEnvironment with trim_blocks and
lstrip_blocks, the loopcontrols extension, `tojson` replaced by json.dumps(ensure_ascii=False) with Python's
default ", " / ": " separators, and the raise_exception / strftime_now globals. Like apply_chat_template,
`enable_thinking` is passed only when the conversation sets it (the template tests `is defined`).

  render_chat_template.py --tokenizer-dir DIR --conversations C.json --out GOLDEN.json   # write the golden
  render_chat_template.py --tokenizer-dir DIR --conversations C.json --check GOLDEN.json # exit 1 on drift

C.json is a list of {"name", "messages", "tools"?, "add_generation_prompt"?, "enable_thinking"?};
GOLDEN.json is a list of {"name", "prompt"} in the same order.
"""
import argparse
import datetime
import json
import sys

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


def make_environment():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render_all(template_text, conversations):
    template = make_environment().from_string(template_text)
    golden = []
    for conversation in conversations:
        kwargs = {}
        if "enable_thinking" in conversation:
            kwargs["enable_thinking"] = conversation["enable_thinking"]
        prompt = template.render(messages=conversation["messages"], tools=conversation.get("tools"),
                                 add_generation_prompt=conversation.get("add_generation_prompt", False), **kwargs)
        golden.append({"name": conversation["name"], "prompt": prompt})
    return golden


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer-dir", required=True, help="folder holding tokenizer_config.json")
    parser.add_argument("--conversations", required=True)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="write the golden file here")
    target.add_argument("--check", help="compare against this golden file; exit 1 if it differs")
    args = parser.parse_args()

    with open(f"{args.tokenizer_dir}/tokenizer_config.json", encoding="utf-8") as f:
        template_text = json.load(f)["chat_template"]
    with open(args.conversations, encoding="utf-8") as f:
        conversations = json.load(f)
    names = [c["name"] for c in conversations]
    if len(set(names)) != len(names):
        sys.exit("error: conversation names must be unique")
    golden = render_all(template_text, conversations)

    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(golden, f, ensure_ascii=False, indent=1)
            f.write("\n")
        print(f"wrote {len(golden)} prompts to {args.out}")
        return
    with open(args.check, encoding="utf-8") as f:
        committed = json.load(f)
    committed_by_name = {g["name"]: g["prompt"] for g in committed}
    drifted = [g["name"] for g in golden if committed_by_name.get(g["name"]) != g["prompt"]]
    stale = sorted(set(committed_by_name) - set(names))
    for name in drifted:
        print(f"drift: {name} renders differently from the committed golden", file=sys.stderr)
    for name in stale:
        print(f"drift: {name} is in the golden but not in the conversations", file=sys.stderr)
    if drifted or stale:
        sys.exit(1)
    print(f"{len(golden)} prompts match {args.check}")


if __name__ == "__main__":
    main()
