"""A slixmpp user that answers chat messages, for the web client tests.

It logs in over STARTTLS (verifying the node's certificate), sends its
presence, accepts subscription requests (and asks back, as a user accepting a
contact request would), and answers each chat message with a body by
"echo: <body>" to its sender. Once it has answered --count messages it waits
for a ping round trip (so the server has routed the last answer), closes its
stream and exits 0. With --hold it stays online after answering until its
standard input ends, so the other side sees it online as long as it looks.

Usage: echo_peer.py --host H --port P --domain D --ca CERT --jid JID \
           --password PW [--count N] [--timeout SECONDS] [--hold]

Prints a JSON line {"ready": true, "jid": ...} once online, so a test can
start the other side then, and a JSON summary as the last line:
{"ok": true, "jid": ..., "received": [{"from", "body"}], "subscribed_from": [...]}.
Exits 1 with a message on stderr if --timeout passes first.
"""

import argparse
import asyncio
import ssl
import sys

import slixmpp

from peer_common import fail, out, wait


class EchoPeer(slixmpp.ClientXMPP):
    def __init__(self, jid, password, ca, count):
        super().__init__(jid, password)
        self.ssl_context = ssl.create_default_context(cafile=ca)
        self.register_plugin("xep_0199")  # ping
        # Approve subscription requests and subscribe back.
        self.roster.auto_authorize = True
        self.roster.auto_subscribe = True
        self.count = count
        self.received = []
        self.subscribed_from = []
        self.online = asyncio.Event()
        self.answered = asyncio.Event()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("presence_subscribe", self.on_subscribe)
        self.add_event_handler("failed_auth", lambda _: fail(f"{jid}: authentication failed"))

    async def on_start(self, _):
        await self.get_roster()
        self.send_presence()
        self.online.set()

    def on_subscribe(self, pres):
        self.subscribed_from.append(str(pres["from"].bare))

    def on_message(self, msg):
        # Chat states and receipts come without a body: not messages to answer.
        if msg["type"] not in ("chat", "normal") or not msg["body"]:
            return
        if len(self.received) >= self.count:
            return
        self.received.append({"from": str(msg["from"]), "body": msg["body"]})
        self.send_message(mto=msg["from"], mbody=f"echo: {msg['body']}", mtype="chat")
        if len(self.received) >= self.count:
            self.answered.set()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--domain", default="localhost")
    ap.add_argument("--ca", required=True)
    ap.add_argument("--jid", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=120, help="seconds for the whole run")
    ap.add_argument("--hold", action="store_true", help="after answering, stay online until stdin ends")
    args = ap.parse_args()

    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout

    def left():
        return max(deadline - loop.time(), 0.1)

    peer = EchoPeer(args.jid, args.password, args.ca, args.count)
    peer.connect(host=args.host, port=args.port)
    await wait(peer.online.wait(), f"{args.jid} to log in", left())
    out({"ready": True, "jid": str(peer.boundjid)})

    await wait(peer.answered.wait(), f"{args.count} message(s), got {peer.received}", left())
    # The ping's answer comes after everything routed before it: the last echo has left the server.
    await wait(peer.plugin["xep_0199"].send_ping(args.domain, timeout=left()), "a ping round trip", left())
    if args.hold:
        await wait(loop.run_in_executor(None, sys.stdin.buffer.read), "the end of stdin", left())
    await wait(peer.disconnect(), "the stream to close", left())
    out(
        {
            "ok": True,
            "jid": str(peer.boundjid),
            "received": peer.received,
            "subscribed_from": peer.subscribed_from,
        }
    )


if __name__ == "__main__":
    asyncio.run(main())
