"""MongooseIM's Inbox (erlang-solutions.com:xmpp:inbox:0) against a running
Meerkat node, with slixmpp and raw stanzas (no client library implements
Inbox).

Subcommands, one scenario each:

  conversations  alice (two resources, "a" and "b") gets 3 messages from bob
                 and 2 from carol, and writes to dave: three conversations
                 with unread 3, 2 and 0. A reply to bob resets his; a
                 `displayed` marker with a wrong id leaves carol's, the right
                 id resets it. Then the filters (hidden_read, box, start/end),
                 the conversation actions (archive, mute, read, reset, bin,
                 empty-bin), each echoed to both of alice's resources, the
                 form, and the errors. Messages from fay, whom alice
                 blocks, make no conversation.
  paging         erin writes to 1000 addresses: 1000 conversations, paged
                 100 at a time forwards with RSM <after/>, then backwards
                 with <before/>, each entry exactly once and in order.

Usage: inbox.py SCENARIO --host H --port P --domain D --ca CERT
Accounts alice, bob, carol, dave, erin and fay (password "secret") must exist. Every
wait has a timeout; exit status 0 means every check held; the last line
printed is a JSON summary.
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
NS = "erlang-solutions.com:xmpp:inbox:0"
CONV = NS + "#conversation"
RSM = "http://jabber.org/protocol/rsm"
FORWARD = "urn:xmpp:forward:0"
DATA = "jabber:x:data"


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, ca):
        super().__init__(jid, "secret")
        self.ssl_context = ssl.create_default_context(cafile=ca)
        self.register_plugin("xep_0199")
        self.messages = asyncio.Queue()
        self.results = asyncio.Queue()  # <result/> of inbox queries
        self.echoes = asyncio.Queue()  # <x xmlns='…#conversation'/> echoes
        self.online = asyncio.Event()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("failed_auth", lambda _: fail(f"{jid}: authentication failed"))
        self.register_handler(Callback("inbox result", MatchXPath(f"{{jabber:client}}message/{{{NS}}}result"),
                                       lambda m: self.results.put_nowait(m.xml.find(f"{{{NS}}}result"))))
        self.register_handler(Callback("inbox echo", MatchXPath(f"{{jabber:client}}message/{{{CONV}}}x"),
                                       lambda m: self.echoes.put_nowait(m)))

    async def on_start(self, _):
        self.send_presence()
        self.online.set()

    def on_message(self, msg):
        if msg["type"] in ("chat", "normal") and msg["body"]:
            self.messages.put_nowait(msg)

    async def iq(self, kind, payload, what):
        iq = self.make_iq_set() if kind == "set" else self.make_iq_get()
        iq.append(ET.fromstring(payload))
        try:
            return await wait(iq.send(timeout=TIMEOUT), what)
        except IqError as e:
            return e.iq

    async def query(self, fields=None, rsm="", what="inbox query"):
        """(entries, fin): entries are dicts of each <result/>; fin the IQ's <fin/>."""
        form = ""
        if fields:
            form = f"<x xmlns='{DATA}' type='submit'>" + "".join(
                f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items()) + "</x>"
        reply = await self.iq("set", f"<inbox xmlns='{NS}' queryid='q1'>{form}{rsm}</inbox>", what)
        check(reply["type"] == "result", f"{what}: {reply}")
        fin = reply.xml.find(f"{{{NS}}}fin")
        check(fin is not None, f"{what}: no <fin/> in {reply}")
        entries = []
        while not self.results.empty():
            entries.append(entry(self.results.get_nowait()))
        check(all(e["queryid"] == "q1" for e in entries), f"{what}: queryid lost: {entries}")
        return entries, fin


def entry(result):
    fwd = result.find(f"{{{FORWARD}}}forwarded")
    msg = fwd.find("{jabber:client}message")
    body = msg.find("{jabber:client}body")
    return {
        "unread": int(result.get("unread")),
        "queryid": result.get("queryid"),
        "stamp": fwd.find("{urn:xmpp:delay}delay").get("stamp"),
        "from": msg.get("from"),
        "to": msg.get("to"),
        "id": msg.get("id"),
        "body": body.text if body is not None else None,
        "read": result.findtext(f"{{{NS}}}read"),
        "box": result.findtext(f"{{{NS}}}box"),
        "archive": result.findtext(f"{{{NS}}}archive"),
        "mute": result.findtext(f"{{{NS}}}mute"),
    }


def peer(e, me):
    """The other party of an entry's last message."""
    frm, to = e["from"].split("/")[0], e["to"].split("/")[0]
    return to if frm == me else frm


def fin_counts(fin):
    return {k: int(fin.findtext(f"{{{NS}}}{k}")) for k in ("count", "unread-messages", "active-conversations")}


async def login(args, local, resource):
    c = Client(f"{local}@{args.domain}/{resource}", args.ca)
    c.connect(host=args.host, port=args.port)
    await wait(c.online.wait(), f"{c.boundjid} to log in")
    return c


async def expect(client, body, what):
    msg = await wait(client.messages.get(), what)
    check(msg["body"] == body, f"{what}: expected {body!r}, got {msg['body']!r}")


async def refused_ping(sender, account):
    """Waits until what `sender` sent to `account`, who blocks it, was handled.

    Every stanza from one sender to an account is handled in order: a ping to
    the account after them, answered (refused, as the account blocks the
    sender), means they were handled.
    """
    try:
        await sender.plugin["xep_0199"].send_ping(account, timeout=TIMEOUT)
        fail("a ping to an account that blocks the sender was answered")
    except IqError as e:
        check(e.iq["error"]["condition"] == "service-unavailable", f"ping refused with {e.iq}")


async def change(client, others, jid, props, what):
    """A #conversation set; returns the echo, which every resource must get."""
    reply = await client.iq("set", f"<query xmlns='{CONV}' jid='{jid}'>{props}</query>", what)
    check(reply["type"] == "result", f"{what}: {reply}")
    echo = None
    for c in [client, *others]:
        m = await wait(c.echoes.get(), f"{what}: the echo to {c.boundjid}")
        x = m.xml.find(f"{{{CONV}}}x")
        check(x.get("jid") == jid, f"{what}: echo for {x.get('jid')}")
        echo = {k: x.findtext(f"{{{CONV}}}{k}") for k in ("read", "box", "archive", "mute")}
    return echo


async def conversations(args):
    d = args.domain
    a, b, c, dave = (f"{u}@{d}" for u in ("alice", "bob", "carol", "dave"))
    alice = await login(args, "alice", "a")
    alice2 = await login(args, "alice", "b")
    bob = await login(args, "bob", "x")
    carol = await login(args, "carol", "x")

    for i in range(1, 4):
        bob.send_message(mto=a + "/a", mbody=f"bob {i}", mtype="chat")
    for i in range(1, 3):
        m = carol.make_message(mto=a + "/a", mbody=f"carol {i}", mtype="chat")
        m["id"] = f"c{i}"
        m.send()
    alice.send_message(mto=dave, mbody="hello dave", mtype="chat")
    # Two senders: each one's messages come in order, interleaved in any way.
    got = [(await wait(alice.messages.get(), f"message {i} of 5"))["body"] for i in range(5)]
    check([g for g in got if g.startswith("bob")] == ["bob 1", "bob 2", "bob 3"]
          and [g for g in got if g.startswith("carol")] == ["carol 1", "carol 2"], f"messages: {got}")

    entries, fin = await alice.query(what="first query")
    got = {peer(e, a): e for e in entries}
    check(set(got) == {b, c, dave}, f"three conversations, got {sorted(got)}")
    check([got[b]["unread"], got[c]["unread"], got[dave]["unread"]] == [3, 2, 0],
          f"unread 3, 2, 0: {entries}")
    check(got[c]["body"] == "carol 2" and got[dave]["body"] == "hello dave", f"last messages: {entries}")
    check(got[dave]["read"] == "true" and got[b]["read"] == "false", f"read flags: {entries}")
    check(all(e["box"] == "inbox" and e["archive"] == "false" and e["mute"] == "0" for e in entries), f"{entries}")
    check(fin_counts(fin) == {"count": 3, "unread-messages": 5, "active-conversations": 2}, f"fin {fin_counts(fin)}")
    check(entries[0]["stamp"] >= entries[1]["stamp"] >= entries[2]["stamp"], "newest first")

    # A reply resets bob's conversation; bob's own inbox counts it.
    alice.send_message(mto=b, mbody="hi bob", mtype="chat")
    await expect(bob, "hi bob", "alice's reply")
    entries, fin = await alice.query(what="after the reply")
    got = {peer(e, a): e for e in entries}
    check(got[b]["unread"] == 0 and got[b]["body"] == "hi bob", f"reply resets: {got[b]}")
    check(entries[0]["body"] == "hi bob", "the newest conversation comes first")
    check(fin_counts(fin)["unread-messages"] == 2, f"fin {fin_counts(fin)}")
    bob_entries, _ = await bob.query(what="bob's inbox")
    check([(peer(e, b), e["unread"]) for e in bob_entries] == [(a, 1)], f"bob's inbox: {bob_entries}")

    # A displayed marker for an older message leaves the count; for the last one, resets it.
    for marker_id, expected in (("c1", 2), ("c2", 0)):
        m = alice.make_message(mto=c, mtype="chat")
        m.xml.append(ET.fromstring(f"<displayed xmlns='urn:xmpp:chat-markers:0' id='{marker_id}'/>"))
        m.send()
        await alice.plugin["xep_0199"].send_ping(d, timeout=TIMEOUT)
        entries, _ = await alice.query(what=f"after a marker for {marker_id}")
        got = {peer(e, a): e for e in entries}
        check(got[c]["unread"] == expected, f"marker {marker_id}: carol's unread {got[c]['unread']} != {expected}")
        check(got[c]["body"] == "carol 2", "a marker is not a last message")

    # Messages from someone alice blocks (XEP-0191) make no conversation,
    # whether her blocklist was just changed or is known to the server.
    fay_jid = f"fay@{d}"
    reply = await alice.iq("set", f"<block xmlns='urn:xmpp:blocking'><item jid='{fay_jid}'/></block>", "block fay")
    check(reply["type"] == "result", f"block: {reply}")
    fay = await login(args, "fay", "x")
    for i in range(1, 3):
        m = fay.make_message(mto=a + "/a", mbody=f"fay {i}", mtype="chat")
        m["id"] = f"e{i}"
        m.send()
        await refused_ping(fay, a)
    entries, fin = await alice.query(what="after fay's messages")
    check(fay_jid not in {peer(e, a) for e in entries}, f"a blocked sender's conversation: {entries}")
    check(fin_counts(fin)["unread-messages"] == 0, f"fin after fay's messages: {fin_counts(fin)}")
    reply = await alice.iq("set", f"<unblock xmlns='urn:xmpp:blocking'><item jid='{fay_jid}'/></unblock>", "unblock")
    check(reply["type"] == "result", f"unblock: {reply}")
    fay.disconnect()

    # Filters.
    carol.send_message(mto=a + "/a", mbody="carol 3", mtype="chat")
    await expect(alice, "carol 3", "carol's third message")
    entries, _ = await alice.query({"hidden_read": "true"}, what="hidden_read")
    check([peer(e, a) for e in entries] == [c], f"hidden_read: {entries}")
    entries, _ = await alice.query({"order": "asc"}, what="ascending")
    check([peer(e, a) for e in entries] == [dave, b, c], f"ascending: {[peer(e, a) for e in entries]}")
    newest, oldest = entries[-1]["stamp"], entries[0]["stamp"]
    entries, _ = await alice.query({"start": newest}, what="start")
    check([peer(e, a) for e in entries] == [c], f"start: {entries}")
    entries, _ = await alice.query({"end": oldest}, what="end")
    check([peer(e, a) for e in entries] == [dave], f"end: {entries}")

    # Actions, each echoed to both resources.
    echo = await change(alice, [alice2], b, "<box>archive</box>", "archive bob")
    check(echo == {"read": "true", "box": "archive", "archive": "true", "mute": "0"}, f"archive echo {echo}")
    entries, _ = await alice.query({"box": "archive"}, what="box archive")
    check([peer(e, a) for e in entries] == [b], f"box archive: {entries}")
    entries, _ = await alice.query({"box": "inbox"}, what="box inbox")
    check([peer(e, a) for e in entries] == [c, dave], f"box inbox: {entries}")
    echo = await change(alice, [alice2], c, "<mute>3600</mute>", "mute carol")
    check(echo["mute"] not in (None, "0") and echo["mute"].endswith("Z"), f"mute echo {echo}")
    echo = await change(alice, [alice2], dave, "<read>false</read>", "unread dave")
    check(echo["read"] == "false", f"read echo {echo}")
    reply = await alice.iq("get", f"<query xmlns='{CONV}' jid='{dave}'/>", "dave's properties")
    props = reply.xml.find(f"{{{CONV}}}query")
    check(props is not None and props.findtext(f"{{{CONV}}}read") == "false", f"dave's properties: {reply}")
    reply = await alice.iq("set", f"<reset xmlns='{CONV}' jid='{dave}'/>", "reset dave")
    check(reply["type"] == "result", f"reset: {reply}")
    entries, fin = await alice.query(what="after the actions")
    got = {peer(e, a): e for e in entries}
    check(got[dave]["unread"] == 0, f"reset: {got[dave]}")
    check(got[c]["mute"] != "0" and got[b]["archive"] == "true", f"after the actions: {entries}")

    # A new message brings an archived conversation back to the inbox.
    bob.send_message(mto=a + "/a", mbody="bob 4", mtype="chat")
    await expect(alice, "bob 4", "bob's fourth message")
    entries, _ = await alice.query({"box": "archive"}, what="archive after a message")
    check(entries == [], f"unarchived: {entries}")

    # The bin.
    await change(alice, [alice2], dave, "<box>bin</box>", "dave to the bin")
    entries, _ = await alice.query(what="without the bin")
    check(dave not in [peer(e, a) for e in entries], f"the bin is left out: {entries}")
    entries, _ = await alice.query({"box": "bin"}, what="the bin")
    check([peer(e, a) for e in entries] == [dave], f"the bin: {entries}")
    reply = await alice.iq("set", f"<empty-bin xmlns='{NS}'/>", "empty-bin")
    check(reply.xml.findtext(f"{{{NS}}}empty-bin/{{{NS}}}num") == "1", f"empty-bin: {reply}")

    # The form, and errors.
    reply = await alice.iq("get", f"<query xmlns='{NS}'/>", "the form")
    fields = [f.get("var") for f in reply.xml.iter(f"{{{DATA}}}field")]
    check(fields == ["FORM_TYPE", "start", "end", "hidden_read", "order", "box", "archive"], f"form: {fields}")
    for what, payload, condition in (
        ("a bad order", f"<inbox xmlns='{NS}'><x xmlns='{DATA}' type='submit'><field var='order'><value>up</value>"
                        f"</field></x></inbox>", "bad-request"),
        ("an unknown box", f"<inbox xmlns='{NS}'><x xmlns='{DATA}' type='submit'><field var='box'><value>nope"
                           f"</value></field></x></inbox>", "bad-request"),
        ("an RSM index", f"<inbox xmlns='{NS}'><set xmlns='{RSM}'><index>3</index></set></inbox>",
         "feature-not-implemented"),
        ("a bad cursor", f"<inbox xmlns='{NS}'><set xmlns='{RSM}'><after>garbage</after></set></inbox>",
         "bad-request"),
        ("no property", f"<query xmlns='{CONV}' jid='{b}'/>", "bad-request"),
        ("a missing conversation", f"<query xmlns='{CONV}' jid='nobody@{d}'><read>true</read></query>",
         "item-not-found"),
    ):
        reply = await alice.iq("set", payload, what)
        check(reply["type"] == "error" and reply["error"]["condition"] == condition,
              f"{what}: expected {condition}, got {reply}")
    reply = await alice.iq("get", f"<query xmlns='{CONV}' jid='nobody@{d}'/>", "a missing conversation's properties")
    check(reply["type"] == "error" and reply["error"]["condition"] == "item-not-found", f"{reply}")
    reply = await bob.iq("get", f"<query xmlns='{CONV}' jid='{a}'/>", "bob's own properties")
    check(reply["type"] == "result", f"bob reads his own: {reply}")
    iq = bob.make_iq_set(ito=a)
    iq.append(ET.fromstring(f"<inbox xmlns='{NS}'/>"))
    try:
        await iq.send(timeout=TIMEOUT)
        fail("bob read alice's inbox")
    except IqError as e:
        check(e.iq["error"]["condition"] == "forbidden", f"another's inbox: {e.iq}")

    # A block takes effect at once, also for a sender whose messages the
    # server has just let into the inbox: fay's first message counts, her
    # second, sent right after alice blocks her, does not.
    fay = await login(args, "fay", "y")
    fay.send_message(mto=a + "/a", mbody="fay 3", mtype="chat")
    await expect(alice, "fay 3", "fay's message before the block")
    reply = await alice.iq("set", f"<block xmlns='urn:xmpp:blocking'><item jid='{fay_jid}'/></block>", "block fay again")
    check(reply["type"] == "result", f"block: {reply}")
    fay.send_message(mto=a + "/a", mbody="fay 4", mtype="chat")
    await refused_ping(fay, a)
    entries, _ = await alice.query(what="after a block between two messages")
    got = {peer(e, a): e for e in entries}
    check(fay_jid in got and got[fay_jid]["unread"] == 1 and got[fay_jid]["body"] == "fay 3",
          f"fay's conversation after the block: {got.get(fay_jid)}")
    reply = await alice.iq("set", f"<unblock xmlns='urn:xmpp:blocking'><item jid='{fay_jid}'/></unblock>", "unblock")
    check(reply["type"] == "result", f"unblock: {reply}")

    for cl in (alice, alice2, bob, carol, fay):
        cl.disconnect()
    return {"scenario": "conversations", "ok": True}


async def paging(args):
    d = args.domain
    a = f"erin@{d}"
    alice = await login(args, "erin", "pager")
    n = 1000
    for i in range(n):
        alice.send_message(mto=f"u{i:04}@{d}", mbody=f"to {i}", mtype="chat")
    await alice.plugin["xep_0199"].send_ping(d, timeout=TIMEOUT)

    # Forwards, newest first: u0999 … u0000.
    seen = []
    after = None
    pages = 0
    while True:
        rsm = f"<set xmlns='{RSM}'><max>100</max>" + (f"<after>{after}</after>" if after else "") + "</set>"
        entries, fin = await alice.query(rsm=rsm, what=f"page {pages}")
        if not entries:
            check(fin.find(f"{{{RSM}}}set/{{{RSM}}}last") is None, "an empty page has no cursors")
            break
        pages += 1
        check(len(entries) == 100, f"page {pages}: {len(entries)} entries")
        seen.extend(peer(e, a) for e in entries)
        after = fin.findtext(f"{{{RSM}}}set/{{{RSM}}}last")
        check(after, f"page {pages}: no <last/>")
    expected = [f"u{i:04}@{d}" for i in reversed(range(n))]
    check(pages == 10, f"10 pages, got {pages}")
    check(seen == expected, f"every conversation once, in order (first differences: "
                            f"{[(i, s, e) for i, (s, e) in enumerate(zip(seen, expected)) if s != e][:3]})")

    # Backwards from the end, with <before/>: the oldest page first.
    back = []
    before = ""
    while True:
        rsm = f"<set xmlns='{RSM}'><max>250</max><before>{before}</before></set>"
        entries, fin = await alice.query(rsm=rsm, what="a page backwards")
        if not entries:
            break
        back = [peer(e, a) for e in entries] + back
        before = fin.findtext(f"{{{RSM}}}set/{{{RSM}}}first")
    check(back == expected, "backwards, every conversation once, in order")
    alice.disconnect()
    return {"scenario": "paging", "ok": True, "conversations": n, "pages": pages}


SCENARIOS = {"conversations": conversations, "paging": paging}


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", choices=SCENARIOS)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--domain", default="localhost")
    ap.add_argument("--ca", required=True)
    args = ap.parse_args()
    summary = await SCENARIOS[args.scenario](args)
    print(json.dumps(summary))


if __name__ == "__main__":
    asyncio.run(main())
