"""alice, a slixmpp client, talking to bob in another data center.

alice knows nothing but her JID (alice@<domain>), her password and one
server address (--host/--port: a node of her data center). She logs in
with SCRAM-SHA-256 over STARTTLS (verifying the node's certificate),
subscribes to bob, approves bob's request, waits for bob's available
presence, then sends N numbered messages ("a2b 0" .. "a2b N-1", then
"a2b end") to bob's bare JID while checking that bob's messages ("b2a 0"
.. "b2a N-1", then "b2a end") arrive exactly once and in order.

bob is played by the Rust test (tests/tests/global.rs). Exit status 0 means
every check held; the last line printed is a JSON summary.

Usage: global_alice.py --host H --port P --domain D --ca CERT --peer bob@D [--count N]
"""

import argparse
import asyncio
import json
import ssl
import sys
import time

import slixmpp

MECH = "SCRAM-SHA-256"


class Alice(slixmpp.ClientXMPP):
    def __init__(self, jid, password, ca, peer):
        super().__init__(jid, password, sasl_mech=MECH)
        self.ssl_context = ssl.create_default_context(cafile=ca)
        self.peer = peer
        self.messages = asyncio.Queue()
        self.online = asyncio.Event()
        self.peer_available = asyncio.Event()
        self.subscribed_to_peer = asyncio.Event()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("presence_subscribe", self.on_subscribe)
        self.add_event_handler("presence_subscribed", self.on_subscribed)
        self.add_event_handler("presence_available", self.on_available)
        self.add_event_handler("failed_auth", lambda _: fail("authentication failed"))

    async def on_start(self, _):
        await self.get_roster()
        self.send_presence()
        self.online.set()

    def on_message(self, msg):
        if msg["type"] in ("chat", "normal"):
            self.messages.put_nowait(msg)
        elif msg["type"] == "error":
            fail(f"error message: {msg}")

    def on_subscribe(self, pres):
        if pres["from"].bare == self.peer:
            self.send_presence(pto=self.peer, ptype="subscribed")

    def on_subscribed(self, pres):
        if pres["from"].bare == self.peer:
            self.subscribed_to_peer.set()

    def on_available(self, pres):
        if pres["from"].bare == self.peer:
            self.peer_available.set()


def fail(why):
    print(f"FAIL alice: {why}", file=sys.stderr, flush=True)
    sys.exit(1)


async def wait(aw, what, timeout=60):
    try:
        return await asyncio.wait_for(aw, timeout)
    except asyncio.TimeoutError:
        fail(f"timed out waiting for {what}")


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--domain", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--peer", required=True)
    ap.add_argument("--password", default="secret")
    ap.add_argument("--count", type=int, default=1000)
    args = ap.parse_args()

    alice = Alice(f"alice@{args.domain}/slixmpp", args.password, args.ca, args.peer)
    alice.connect(host=args.host, port=args.port)
    await wait(alice.online.wait(), "login")
    mech = alice.plugin["feature_mechanisms"].mech.name
    if mech != MECH:
        fail(f"authenticated with {mech}")
    print(f"alice online as {alice.boundjid}", flush=True)

    alice.send_presence(pto=args.peer, ptype="subscribe")
    await wait(alice.subscribed_to_peer.wait(), "bob to approve the subscription")
    await wait(alice.peer_available.wait(), "bob's available presence")
    print("alice sees bob available", flush=True)

    started = time.monotonic()
    for i in range(args.count):
        alice.send_message(mto=args.peer, mbody=f"a2b {i}", mtype="chat")
    alice.send_message(mto=args.peer, mbody="a2b end", mtype="chat")

    for i in range(args.count + 1):
        msg = await wait(alice.messages.get(), f"b2a #{i}")
        expect = f"b2a {i}" if i < args.count else "b2a end"
        if msg["body"] != expect or msg["from"].bare != args.peer:
            fail(f"expected {expect!r} from {args.peer}, got {msg['body']!r} from {msg['from']}")
    elapsed = time.monotonic() - started

    # A short quiet period: a duplicate that trails the end marker would show here.
    try:
        extra = await asyncio.wait_for(alice.messages.get(), 1.0)
        fail(f"unexpected message after the end marker: {extra['body']!r}")
    except asyncio.TimeoutError:
        pass

    alice.disconnect()
    print(json.dumps({
        "mechanism": mech,
        "bound": str(alice.boundjid),
        "received_in_order": args.count,
        "sent": args.count,
        "seconds": round(elapsed, 3),
    }), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
