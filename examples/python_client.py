#!/usr/bin/env python3
"""A command-line chat over agentserve's WebSocket protocol (docs/protocol.md), with resume.

Each line read from stdin (or each --message) is sent as a user message and the answer is streamed as it
arrives. With --drop-after N the client closes its connection after N text deltas of the first answer,
reconnects, sends session.resume with the last seq it saw, and receives the rest of the answer: the text
it prints must equal the server's response.output_text.done text, or the client exits with status 1.

Needs the `websockets` package (Debian: python3-websockets), version 10 or newer.
"""
import argparse
import asyncio
import json
import sys

import websockets


async def connect(url, api_key):
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:  # websockets >= 14 names the argument additional_headers, older ones extra_headers
        return await websockets.connect(url, additional_headers=headers, max_size=None)
    except TypeError:
        return await websockets.connect(url, extra_headers=headers, max_size=None)


class Chat:
    def __init__(self, args):
        self.args = args
        self.ws = None
        self.session_id = None
        self.last_seq = 0

    async def send(self, event):
        await self.ws.send(json.dumps(event))

    async def read(self):
        event = json.loads(await self.ws.recv())
        if event.get("type") == "error":
            raise RuntimeError(f"server error: {event['error']}")
        if "seq" in event and event.get("session_id", self.session_id) == self.session_id:
            self.last_seq = max(self.last_seq, event["seq"])
        return event

    async def read_until(self, kind):
        while True:
            event = await self.read()
            if event["type"] == kind:
                return event

    async def open(self):
        self.ws = await connect(self.args.url, self.args.api_key)
        sampling = {"temperature": 0, "max_tokens": self.args.max_tokens}
        await self.send({"type": "session.create", "session": {"agent_id": "python-client", "sampling": sampling}})
        self.session_id = (await self.read_until("session.created"))["session"]["id"]
        print(f"[session {self.session_id}]", file=sys.stderr)

    async def resume(self):
        await self.ws.close()
        self.ws = await connect(self.args.url, self.args.api_key)
        # The missed events are replayed before session.resumed arrives; ask() reads them like live ones.
        await self.send({"type": "session.resume", "session_id": self.session_id, "last_seq": self.last_seq})
        print(f"[resuming after seq {self.last_seq}]", file=sys.stderr)

    async def ask(self, text, drop_after):
        await self.send({"type": "conversation.item.create",
                         "item": {"type": "message", "role": "user", "content": text}})
        await self.send({"type": "response.create"})
        streamed, deltas, final = "", 0, None
        while True:
            event = await self.read()
            kind = event["type"]
            if kind == "response.output_text.delta":
                streamed += event["delta"]
                deltas += 1
                print(event["delta"], end="", flush=True)
                if drop_after and deltas == drop_after:
                    drop_after = 0
                    await self.resume()
            elif kind == "response.output_text.done":
                final = event["text"]
            elif kind == "response.done":
                print()
                status = event["response"]["status"]
                print(f"[{status}: {json.dumps(event['response'].get('usage', {}))}]", file=sys.stderr)
                if final is not None and final != streamed:
                    print("[error: the streamed text differs from response.output_text.done]", file=sys.stderr)
                    return False
                return status in ("completed", "incomplete")


async def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="ws://127.0.0.1:8080/v1/ws")
    parser.add_argument("--api-key", default="")
    parser.add_argument("--message", action="append", help="send this instead of reading stdin (repeatable)")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--drop-after", type=int, default=0,
                        help="reconnect and resume after this many deltas of the first answer")
    args = parser.parse_args()
    chat = Chat(args)
    await chat.open()
    lines = args.message if args.message else (line.rstrip("\n") for line in sys.stdin)
    ok, drop_after = True, args.drop_after
    for line in lines:
        if line:
            ok = await chat.ask(line, drop_after) and ok
            drop_after = 0
    await chat.ws.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
