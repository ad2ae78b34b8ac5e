"""A slixmpp external component (XEP-0114), for the component tests.

It connects to a [[listen.component]] port (plain TCP, or direct TLS with
--tls, verifying the node's certificate for the name --host), hand-shakes with
--secret, answers pings and disco#info (slixmpp's own plugins) and answers
each message with a body by "echo: <body>", from the component's domain, to
its sender. Once it has answered --count messages it pings --ping-to (a user
or server, so that the server has routed the last answer) and exits 0 with a
JSON summary as the last line: {"ok": true, "received": [{"from", "body"}]}.

Usage: component.py --host H --port P --domain D --secret S [--tls --ca CERT]
           [--count N] [--ping-to JID] [--timeout SECONDS]

Prints {"ready": true} once the handshake is accepted. Exits 1 with a
message on stderr if --timeout passes first or the server ends the stream.
"""

import argparse
import asyncio
import logging
import os
import ssl
import sys

from slixmpp.componentxmpp import ComponentXMPP

from peer_common import fail, out, wait


class Echo(ComponentXMPP):
    def __init__(self, domain, secret, host, port, count):
        super().__init__(domain, secret, host, port)
        self.register_plugin("xep_0030")  # disco
        self.register_plugin("xep_0199")  # ping
        self.count = count
        self.received = []
        self.online = asyncio.Event()
        self.answered = asyncio.Event()
        self.add_event_handler("session_start", lambda _: self.online.set())
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("stream_error", lambda e: fail(f"stream error: {e}"))

    def on_message(self, msg):
        if msg["type"] == "error" or not msg["body"]:
            return
        self.received.append({"from": str(msg["from"]), "body": msg["body"]})
        self.send_message(mto=msg["from"], mfrom=self.boundjid.bare, mbody=f"echo: {msg['body']}", mtype="chat")
        if len(self.received) >= self.count:
            self.answered.set()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--domain", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--ca")
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--ping-to", default="localhost")
    ap.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args()
    # slixmpp reports connection failures through logging only.
    logging.basicConfig(level=logging.DEBUG if os.environ.get("COMPONENT_DEBUG") else logging.WARNING, stream=sys.stderr)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout

    def left():
        return max(deadline - loop.time(), 0.1)

    comp = Echo(args.domain, args.secret, args.host, args.port, args.count)
    if args.tls:
        # slixmpp checks the certificate against the host it connects to
        # (--host, so a name here), and must not fall back to plain TCP. A
        # ComponentXMPP names no direct-TLS service of its own (ClientXMPP
        # names 'xmpps-client'); one is needed for a direct-TLS attempt.
        comp.tls_services = {"xmpps-component"}
        comp.enable_direct_tls = True
        comp.enable_plaintext = False
        comp.ssl_context = ssl.create_default_context(cafile=args.ca)
    comp.connect()
    await wait(comp.online.wait(), "the handshake", left())
    out({"ready": True, "jid": args.domain})
    await wait(comp.answered.wait(), f"{args.count} message(s), got {comp.received}", left())
    await wait(comp.plugin["xep_0199"].send_ping(args.ping_to, timeout=left()), "a ping round trip", left())
    await wait(comp.disconnect(), "the stream to close", left())
    out({"ok": True, "received": comp.received})


if __name__ == "__main__":
    asyncio.run(main())
