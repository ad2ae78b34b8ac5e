"""One slixmpp client logging in with SASL EXTERNAL (XEP-0178) and a client
certificate, over STARTTLS or direct TLS (XEP-0368), verifying the node's
certificate.

Usage: external.py --port P --ca CERT --cert PEM --key PEM --jid JID
                   [--direct-tls] [--authzid JID] --expect ok|refused

With --expect ok the client must log in with EXTERNAL, bind, and get an
answer to a ping; it prints {"jid": the bound JID}. With --expect refused it
must not log in; it prints {"refused": "failure: <condition>"} for the SASL
failure the node answered with, or {"refused": "no mechanism"} when the node
did not offer EXTERNAL. Exit status 0 means the expectation
held.
"""

import argparse
import asyncio
import ssl

import slixmpp

from peer_common import fail, out, wait


class Client(slixmpp.ClientXMPP):
    def __init__(self, args):
        # No password: EXTERNAL is the only mechanism this client can use.
        super().__init__(args.jid, "", sasl_mech="EXTERNAL")
        self.ssl_context = ssl.create_default_context(cafile=args.ca)
        self.certfile = args.cert
        self.keyfile = args.key
        if args.authzid:
            self.credentials["authzid"] = args.authzid
        if args.direct_tls:
            self.enable_direct_tls = True
            self.enable_starttls = False
        self.register_plugin("xep_0199")
        self.outcome = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", lambda _: self.settle("session"))
        self.add_event_handler("failed_auth", lambda f: self.settle(f"failure: {f['condition']}"))
        # Fired (before "no_auth") when the node offers no mechanism slixmpp may use.
        self.add_event_handler("failed_all_auth", lambda _: self.settle("no mechanism"))

    def settle(self, what):
        if not self.outcome.done():
            self.outcome.set_result(what)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="localhost")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--jid", required=True)
    ap.add_argument("--authzid")
    ap.add_argument("--direct-tls", action="store_true")
    ap.add_argument("--expect", choices=["ok", "refused"], required=True)
    args = ap.parse_args()

    c = Client(args)
    c.connect(host=args.host, port=args.port)
    outcome = await wait(c.outcome, "the login to end", 30)
    if args.expect == "refused":
        if outcome == "session":
            fail(f"logged in as {c.boundjid} although refusal was expected")
        out({"refused": outcome})
        return
    if outcome != "session":
        fail(f"login refused ({outcome})")
    mech = c.plugin["feature_mechanisms"].mech.name
    if mech != "EXTERNAL":
        fail(f"authenticated with {mech}")
    await wait(c.plugin["xep_0199"].ping(jid=c.boundjid.domain, timeout=10), "a ping answer", 15)
    out({"jid": str(c.boundjid)})
    c.disconnect()


if __name__ == "__main__":
    asyncio.run(main())
