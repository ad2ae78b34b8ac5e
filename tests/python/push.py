"""XEP-0357 push notifications against a running Meerkat node with
mod_event_pusher (push) and mod_inbox, with slixmpp.

The app server is a slixmpp client's full JID (appserver@D/push) that
answers every publish. alice enables notifications to node n1 with a
publish-options form; while she is offline, bob sends her 2 messages and
carol 1: the app server gets 3 notifications with message-count 1, 2 and 3
(alice's unread total from Inbox), the senders, the bodies and the
publish-options. alice comes back, disables n1 and enables n2: the next
message is announced to n2 only.

Usage: push.py --host H --port P --domain D --ca CERT
Accounts alice, bob, carol and appserver (password "secret") must exist.
Every wait has a timeout; exit status 0 means every check held; the last
line printed is a JSON summary.
"""

import argparse
import asyncio
import json
import ssl
import xml.etree.ElementTree as ET

import slixmpp
from peer_common import check, fail, wait
from slixmpp.exceptions import IqError
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

TIMEOUT = 20
PUSH = "urn:xmpp:push:0"
PUBSUB = "http://jabber.org/protocol/pubsub"
DATA = "jabber:x:data"
OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"


def form_values(x):
    return {f.get("var"): f.findtext(f"{{{DATA}}}value") for f in x.iter(f"{{{DATA}}}field")}


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, ca):
        super().__init__(jid, "secret")
        self.ssl_context = ssl.create_default_context(cafile=ca)
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0199")
        self.messages = asyncio.Queue()
        self.notifications = asyncio.Queue()
        self.online = asyncio.Event()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("failed_auth", lambda _: fail(f"{jid}: authentication failed"))
        self.register_handler(Callback("push", MatchXPath(f"{{jabber:client}}iq/{{{PUBSUB}}}pubsub"), self.on_publish))

    async def on_start(self, _):
        self.send_presence()
        self.online.set()

    def on_message(self, msg):
        if msg["type"] in ("chat", "normal") and msg["body"]:
            self.messages.put_nowait(msg)

    def on_publish(self, iq):
        pubsub = iq.xml.find(f"{{{PUBSUB}}}pubsub")
        publish = pubsub.find(f"{{{PUBSUB}}}publish")
        summary = publish.find(f"{{{PUBSUB}}}item/{{{PUSH}}}notification/{{{DATA}}}x")
        options = pubsub.find(f"{{{PUBSUB}}}publish-options/{{{DATA}}}x")
        self.notifications.put_nowait({
            "from": iq["from"].full,
            "node": publish.get("node"),
            "summary": form_values(summary) if summary is not None else None,
            "options": form_values(options) if options is not None else None,
        })
        iq.reply().send()

    async def command(self, payload, what):
        iq = self.make_iq_set()
        iq.append(ET.fromstring(payload))
        try:
            reply = await wait(iq.send(timeout=TIMEOUT), what)
        except IqError as e:
            fail(f"{what}: {e.iq}")
        check(reply["type"] == "result", f"{what}: {reply}")


async def login(args, local, resource):
    c = Client(f"{local}@{args.domain}/{resource}", args.ca)
    c.connect(host=args.host, port=args.port)
    await wait(c.online.wait(), f"{c.boundjid} to log in")
    return c


def enable(app, node):
    return (f"<enable xmlns='{PUSH}' jid='{app}' node='{node}'><x xmlns='{DATA}' type='submit'>"
            f"<field var='FORM_TYPE'><value>{OPTIONS}</value></field>"
            f"<field var='secret'><value>s3cret-{node}</value></field></x></enable>")


async def scenario(args):
    d = args.domain
    a, b, c = (f"{u}@{d}" for u in ("alice", "bob", "carol"))
    app = await login(args, "appserver", "push")
    app_jid = app.boundjid.full
    alice = await login(args, "alice", "phone")
    info = await wait(alice.plugin["xep_0030"].get_info(jid=a, timeout=TIMEOUT), "alice's disco#info")
    check(PUSH in info["disco_info"]["features"], f"{PUSH} advertised on the account: {info}")
    await alice.command(enable(app_jid, "n1"), "enable n1")
    alice.disconnect()
    await wait(alice.disconnected, "alice to go")

    bob = await login(args, "bob", "x")
    carol = await login(args, "carol", "x")
    bob.send_message(mto=a, mbody="bob 1", mtype="chat")
    bob.send_message(mto=a, mbody="bob 2", mtype="chat")
    carol.send_message(mto=a, mbody="carol 1", mtype="chat")
    got = [await wait(app.notifications.get(), f"notification {i}") for i in range(3)]
    check([n["summary"]["message-count"] for n in got] == ["1", "2", "3"],
          f"message-count is alice's unread total: {got}")
    check(all(n["node"] == "n1" and n["from"] == a for n in got), f"from alice's bare JID to n1: {got}")
    check(all(n["summary"]["FORM_TYPE"] == "urn:xmpp:push:summary" for n in got), f"{got}")
    check(all(n["options"] and n["options"].get("secret") == "s3cret-n1" for n in got), f"publish-options: {got}")
    senders = sorted(n["summary"]["last-message-sender"].split("/")[0] for n in got)
    bodies = sorted(n["summary"]["last-message-body"] for n in got)
    check(senders == [b, b, c] and bodies == ["bob 1", "bob 2", "carol 1"], f"senders and bodies: {got}")

    # Back online: the stored messages arrive; n1 off, n2 on.
    alice = await login(args, "alice", "phone")
    for _ in range(3):
        await wait(alice.messages.get(), "a stored message")
    await alice.command(f"<disable xmlns='{PUSH}' jid='{app_jid}' node='n1'/>", "disable n1")
    await alice.command(enable(app_jid, "n2"), "enable n2")
    alice.disconnect()
    await wait(alice.disconnected, "alice to go again")
    bob.send_message(mto=a, mbody="bob 3", mtype="chat")
    n = await wait(app.notifications.get(), "the notification after the switch")
    check(n["node"] == "n2" and n["options"]["secret"] == "s3cret-n2", f"only n2: {n}")
    check(n["summary"]["last-message-body"] == "bob 3", f"{n}")
    # The app server saw nothing for n1: bob's next message comes to n2 alone too.
    bob.send_message(mto=a, mbody="bob 4", mtype="chat")
    n = await wait(app.notifications.get(), "the last notification")
    check(n["node"] == "n2" and n["summary"]["last-message-body"] == "bob 4", f"{n}")
    check(app.notifications.empty(), "nothing more")
    for cl in (app, bob, carol):
        cl.disconnect()
    return {"ok": True, "notifications": 5}


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--domain", default="localhost")
    ap.add_argument("--ca", required=True)
    args = ap.parse_args()
    print(json.dumps(await scenario(args)))


if __name__ == "__main__":
    asyncio.run(main())
