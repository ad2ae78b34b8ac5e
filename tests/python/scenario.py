"""Two slixmpp clients against a running Meerkat node.

They log in with SCRAM-SHA-256 over STARTTLS (verifying the node's
certificate), subscribe to each other, see each other's presence, exchange
N messages each way and check that every one arrives in order. Then bob goes
offline, alice writes to him, and after bob logs in again the message arrives
with a XEP-0203 delay stamp.

Usage: scenario.py --host H --port P --domain D --ca CERT [--count N]
Accounts alice and bob (password "secret") must exist. Exit status 0 means
every check held; the last line printed is a JSON summary.
"""

import argparse
import asyncio
import json
import ssl
import sys

import slixmpp

MECH = "SCRAM-SHA-256"


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password, ca, peer):
        super().__init__(jid, password, sasl_mech=MECH)
        self.ssl_context = ssl.create_default_context(cafile=ca)
        self.peer = peer
        self.register_plugin("xep_0199")  # ping
        self.register_plugin("xep_0203")  # delayed delivery
        self.messages = asyncio.Queue()
        self.online = asyncio.Event()
        self.peer_available = asyncio.Event()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("presence_subscribe", self.on_subscribe)
        self.add_event_handler("presence_available", self.on_available)
        self.add_event_handler("failed_auth", lambda _: self.fail("authentication failed"))

    def fail(self, why):
        print(f"FAIL {self.boundjid}: {why}", file=sys.stderr)
        sys.exit(1)

    async def on_start(self, _):
        await self.get_roster()
        self.send_presence()
        self.online.set()

    def on_message(self, msg):
        if msg["type"] in ("chat", "normal"):
            self.messages.put_nowait(msg)

    def on_subscribe(self, pres):
        # Approve, and ask back, as a user accepting a contact request would.
        self.send_presence(pto=pres["from"].bare, ptype="subscribed")
        if self.client_roster[pres["from"].bare]["subscription"] in ("none", "from"):
            self.send_presence(pto=pres["from"].bare, ptype="subscribe")

    def on_available(self, pres):
        if pres["from"].bare == self.peer:
            self.peer_available.set()

    def used_mechanism(self):
        return self.plugin["feature_mechanisms"].mech.name


async def wait(coro, what, timeout=30):
    try:
        return await asyncio.wait_for(coro, timeout)
    except asyncio.TimeoutError:
        print(f"FAIL: timed out waiting for {what}", file=sys.stderr)
        sys.exit(1)


async def connect(c, args):
    c.connect(host=args.host, port=args.port)
    await wait(c.online.wait(), f"{c.boundjid} to log in")


async def receive(client, sender, count, what):
    for i in range(count):
        msg = await wait(client.messages.get(), f"{what} #{i}")
        expect = f"{what} {i}"
        if msg["body"] != expect or msg["from"].bare != sender:
            client.fail(f"expected {expect!r} from {sender}, got {msg['body']!r} from {msg['from']}")


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--domain", default="localhost")
    ap.add_argument("--ca", required=True)
    ap.add_argument("--count", type=int, default=1000)
    args = ap.parse_args()
    a_jid, b_jid = f"alice@{args.domain}", f"bob@{args.domain}"

    alice = Client(f"{a_jid}/laptop", "secret", args.ca, b_jid)
    bob = Client(f"{b_jid}/phone", "secret", args.ca, a_jid)
    await connect(alice, args)
    await connect(bob, args)
    for c in (alice, bob):
        if c.used_mechanism() != MECH:
            c.fail(f"authenticated with {c.used_mechanism()}")

    alice.send_presence(pto=b_jid, ptype="subscribe")
    await wait(alice.peer_available.wait(), "alice to see bob's presence")
    await wait(bob.peer_available.wait(), "bob to see alice's presence")

    for i in range(args.count):
        alice.send_message(mto=b_jid, mbody=f"a2b {i}", mtype="chat")
        bob.send_message(mto=a_jid, mbody=f"b2a {i}", mtype="chat")
    await asyncio.gather(
        receive(bob, a_jid, args.count, "a2b"),
        receive(alice, b_jid, args.count, "b2a"),
    )

    # Offline delivery: bob leaves, alice writes, bob comes back.
    bob_gone = asyncio.Event()
    alice.add_event_handler("presence_unavailable", lambda p: p["from"].bare == b_jid and bob_gone.set())
    bob.disconnect()
    await wait(bob_gone.wait(), "bob's unavailable presence")
    alice.send_message(mto=b_jid, mbody="while you were away", mtype="chat")
    # A ping round trip guarantees the server has processed the message before bob returns.
    await alice.plugin["xep_0199"].send_ping(args.domain, timeout=10)
    bob2 = Client(f"{b_jid}/phone", "secret", args.ca, a_jid)
    await connect(bob2, args)
    msg = await wait(bob2.messages.get(), "the offline message")
    stamp = msg["delay"]["stamp"]
    if msg["body"] != "while you were away" or not stamp:
        bob2.fail(f"offline message wrong: body={msg['body']!r} delay={stamp!r}")

    alice.disconnect()
    bob2.disconnect()
    print(json.dumps({"mechanism": MECH, "messages_each_way": args.count, "offline_delay_stamp": str(stamp)}))


if __name__ == "__main__":
    asyncio.run(main())
