#!/usr/bin/python3
"""A small moderation webhook for agentserve's demos and tests (Python 3 standard library only).

It answers OpenAI's moderation shape, {"results":[{"flagged", "categories", "category_scores"}]}, flagging
the configured words (case-insensitive, anywhere in the input), and verifies the Standard Webhooks signature
(webhook-id, webhook-timestamp, webhook-signature) when secrets are given: a bad or missing one gets 401.
Test modes make it misbehave on purpose: --delay-ms, --status, --garbage, --fail-first; --flag-kind flags
every check of one kind (e.g. tool_arguments) whatever its text.
When ready it prints "PORT <n>" on stdout (use --port 0 for a free port).
GET /stats returns {"requests": n, "ids": [webhook-id, ...]} so a test can see retries and their ids.
"""
import argparse
import base64
import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def decode_secret(secret):
    # "whsec_<base64>" is the spec's form; any other string is the key bytes themselves (as agentserve does).
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_"):])
    return secret.encode()


def signature(key, msg_id, timestamp, body):
    mac = hmac.new(key, msg_id.encode() + b"." + timestamp.encode() + b"." + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(keys, headers, body, tolerance_s=300):
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    sent = headers.get("webhook-signature")
    if not msg_id or not timestamp or not sent:
        return False
    try:
        if abs(time.time() - int(timestamp)) > tolerance_s:
            return False
    except ValueError:
        return False
    candidates = sent.split(" ")
    for key in keys:
        expected = signature(key, msg_id, timestamp, body)
        if any(hmac.compare_digest(expected, c) for c in candidates):
            return True
    return False


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--flag", action="append", default=[], metavar="WORD[=CATEGORY]",
                        help="flag inputs containing WORD under CATEGORY (default category: flagged_word)")
    parser.add_argument("--flag-kind", action="append", default=[], metavar="KIND",
                        help="flag every check whose metadata.kind is KIND (output_text, reasoning, "
                             "tool_arguments, tool_result, input), whatever its text")
    parser.add_argument("--secret", action="append", default=[], help="Standard Webhooks secret (repeatable)")
    parser.add_argument("--delay-ms", type=int, default=0, help="wait this long before every answer")
    parser.add_argument("--status", type=int, default=200, help="answer every request with this HTTP status")
    parser.add_argument("--garbage", action="store_true", help="answer 200 with a body that is not JSON")
    parser.add_argument("--fail-first", type=int, default=0, help="answer 500 to the first N requests")
    args = parser.parse_args()

    words = {}
    for item in args.flag:
        word, _, category = item.partition("=")
        words[word.lower()] = category or "flagged_word"
    keys = [decode_secret(s) for s in args.secret]
    lock = threading.Lock()
    seen = {"requests": 0, "ids": []}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as agentserve's client expects

        def log_message(self, fmt, *a):  # quiet: tests read stdout for the port
            pass

        def reply(self, status, body, content_type="application/json"):
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/stats":
                with lock:
                    return self.reply(200, json.dumps(seen))
            self.reply(404, json.dumps({"error": "not found"}))

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                seen["requests"] += 1
                seen["ids"].append(self.headers.get("webhook-id", ""))
                number = seen["requests"]
            if args.delay_ms:
                time.sleep(args.delay_ms / 1000.0)
            if keys and not verify(keys, self.headers, body):
                return self.reply(401, json.dumps({"error": "bad webhook signature"}))
            if number <= args.fail_first or args.status != 200:
                return self.reply(500 if number <= args.fail_first else args.status, json.dumps({"error": "failing"}))
            if args.garbage:
                return self.reply(200, "this is { not json")
            try:
                request = json.loads(body)
                text = request["input"]
            except (ValueError, KeyError, TypeError):
                return self.reply(400, json.dumps({"error": "body must be JSON with an input"}))
            metadata = request.get("metadata") if isinstance(request, dict) else None
            kind = metadata.get("kind") if isinstance(metadata, dict) else None
            flag_kind = kind in args.flag_kind
            texts = text if isinstance(text, list) else [text]
            results = []
            for t in texts:
                lowered = str(t).lower()
                hits = {c for w, c in words.items() if w in lowered}
                if flag_kind:
                    hits.add("flagged_kind")
                categories = {c: (c in hits) for c in sorted(set(words.values()) | hits)}
                scores = {c: (1.0 if c in hits else 0.0) for c in categories}
                results.append({"flagged": bool(hits), "categories": categories, "category_scores": scores})
            self.reply(200, json.dumps({"id": "modr-local", "model": "word-list", "results": results}))

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print("PORT %d" % server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
