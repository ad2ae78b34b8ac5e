"""slixmpp's own extension plugins against a running Meerkat node.

Subcommands, one scenario each:

  mam       XEP-0313 + XEP-0059 (plugins xep_0313, xep_0059): alice sends bob
            30 messages; bob pages through his archive filtered on alice, 10 at
            a time with RSM, and gets all 30 in order; a query whose `start`
            lies after the 20th message returns exactly the last 10.
  carbons   XEP-0280 (plugin xep_0280): bob has resources "a" and "b" with
            carbons enabled; alice writes to bob/a and bob/b gets a received
            carbon of it; bob/a writes to alice and bob/b gets a sent carbon.
  blocking  XEP-0191 (plugin xep_0191): bob blocks alice; alice's message
            bounces with service-unavailable and bob gets nothing; the
            blocklist holds alice; after unblocking, a message gets through.
  sm_resume XEP-0198 (plugin xep_0198, allow_resume): bob enables stream
            management with resumption; while alice sends him 100 numbered
            messages, bob's TCP connection is aborted (no stream close) and
            bob reconnects; the stream is resumed (session_resumed, no new
            bind or session_start) and bob has every message exactly once, in
            order, across the cut.

Usage: extensions.py SCENARIO --host H --port P --domain D --ca CERT
Accounts alice, bob and (for mam) carol (password "secret") must exist. Every wait has a
timeout, so a hang fails clearly. Exit status 0 means every check held; the
last line printed is a JSON summary.
"""

import argparse
import asyncio
import json
import ssl
import sys

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.plugins import xep_0082

TIMEOUT = 10


def fail(why):
    print(f"FAIL: {why}", file=sys.stderr)
    sys.exit(1)


def check(cond, why):
    if not cond:
        fail(why)


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password, ca, plugins):
        super().__init__(jid, password)
        self.ssl_context = ssl.create_default_context(cafile=ca)
        for p in ("xep_0199", *plugins):
            self.register_plugin(p)
        self.messages = asyncio.Queue()  # chat/normal messages with a body
        self.errors = asyncio.Queue()  # type='error' messages
        self.carbons = asyncio.Queue()  # ("received" | "sent", inner message)
        self.online = asyncio.Event()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("message_error", self.errors.put_nowait)
        self.add_event_handler("carbon_received", lambda m: self.carbons.put_nowait(("received", m["carbon_received"])))
        self.add_event_handler("carbon_sent", lambda m: self.carbons.put_nowait(("sent", m["carbon_sent"])))
        self.add_event_handler("failed_auth", lambda _: fail(f"{jid}: authentication failed"))

    async def on_start(self, _):
        self.send_presence()
        self.online.set()

    def on_message(self, msg):
        if msg["type"] in ("chat", "normal") and msg["body"]:
            self.messages.put_nowait(msg)

    async def barrier(self, domain):
        """A ping round trip: the answer comes after everything routed before it."""
        await self.plugin["xep_0199"].send_ping(domain, timeout=TIMEOUT)


async def wait(coro, what, timeout=TIMEOUT):
    try:
        return await asyncio.wait_for(coro, timeout)
    except (asyncio.TimeoutError, IqTimeout):
        fail(f"timed out waiting for {what}")


async def login(args, local, resource, plugins=()):
    c = Client(f"{local}@{args.domain}/{resource}", "secret", args.ca, plugins)
    c.connect(host=args.host, port=args.port)
    await wait(c.online.wait(), f"{c.boundjid} to log in")
    return c


async def expect_body(client, sender, body, what):
    msg = await wait(client.messages.get(), what)
    check(msg["body"] == body and msg["from"].bare == sender,
          f"{what}: expected {body!r} from {sender}, got {msg['body']!r} from {msg['from']}")
    return msg


# --- XEP-0313 --------------------------------------------------------------


def archived(msg):
    """(archive id, stamp, from, body) of one MAM result message."""
    fwd = msg["mam_result"]["forwarded"]
    return msg["mam_result"]["id"], fwd["delay"]["stamp"], fwd["stanza"]["from"].bare, fwd["stanza"]["body"]


async def mam(args):
    a_jid, b_jid = f"alice@{args.domain}", f"bob@{args.domain}"
    alice = await login(args, "alice", "laptop")
    bob = await login(args, "bob", "phone", ("xep_0313", "xep_0059"))

    # 20 messages, then 10 more once bob has the first 20.
    for i in range(20):
        alice.send_message(mto=b_jid, mbody=f"mam {i}", mtype="chat")
    for i in range(20):
        await expect_body(bob, a_jid, f"mam {i}", f"live message #{i}")
    for i in range(20, 30):
        alice.send_message(mto=b_jid, mbody=f"mam {i}", mtype="chat")
    for i in range(20, 30):
        await expect_body(bob, a_jid, f"mam {i}", f"live message #{i}")
    # Someone else's message to bob, which the `with` filter must leave out.
    carol = await login(args, "carol", "desk")
    carol.send_message(mto=b_jid, mbody="not from alice", mtype="chat")
    await expect_body(bob, f"carol@{args.domain}", "not from alice", "carol's message")
    carol.disconnect()

    # Pages of 10 through slixmpp's RSM iterator.
    pages = []
    items = []
    iterator = bob.plugin["xep_0313"].retrieve(with_jid=slixmpp.JID(a_jid), iterator=True, rsm={"max": 10})
    while True:
        try:
            page = await wait(iterator.next(), f"archive page {len(pages)}")
        except StopAsyncIteration:
            break
        results = page["mam"]["results"]
        pages.append(len(results))
        items.extend(archived(m) for m in results)
        check(len(pages) <= 5, f"paging does not end: pages so far {pages}")
    bodies = [b for (_, _, _, b) in items]
    check(bodies == [f"mam {i}" for i in range(30)], f"archive bodies out of order or missing: {bodies}")
    check(all(frm == a_jid for (_, _, frm, _) in items), f"archive senders: {[f for (_, _, f, _) in items]}")
    check(len({i for (i, _, _, _) in items}) == 30, "archive ids are not unique")
    check([p for p in pages if p] == [10, 10, 10], f"page sizes {pages}")

    # `start` at the 21st message's stamp (stamps have microseconds, and the
    # 21st was sent after bob had the 20th): only the last 10 remain.
    stamp20, start = items[19][1], items[20][1]
    check(stamp20 < start, f"no gap between the 20th ({stamp20}) and 21st ({start}) stamps")
    try:
        iq = await bob.plugin["xep_0313"].retrieve(
            with_jid=slixmpp.JID(a_jid), start=start, rsm={"max": 20}, timeout=TIMEOUT)
    except IqError as e:
        fail(f"query with start={xep_0082.format_datetime(start)} failed: {e.iq}")
    later = [archived(m) for m in iq["mam"]["results"]]
    later_bodies = [b for (_, _, _, b) in later]
    check(later_bodies == [f"mam {i}" for i in range(20, 30)], f"start query returned {later_bodies}")
    check([i for (i, _, _, _) in later] == [i for (i, _, _, _) in items[20:]], "start query ids differ")
    check(iq["mam_fin"]["complete"] in ("true", True), f"start query not complete: {iq}")

    alice.disconnect()
    bob.disconnect()
    return {
        "archived": len(items),
        "pages": [p for p in pages if p],
        "requests": len(pages),
        "in_order": True,
        "start": xep_0082.format_datetime(start),
        "after_start": len(later),
        "first_after_start": later_bodies[0],
    }


# --- XEP-0280 --------------------------------------------------------------


async def carbons(args):
    a_jid, b_jid = f"alice@{args.domain}", f"bob@{args.domain}"
    alice = await login(args, "alice", "laptop")
    bob_a = await login(args, "bob", "a", ("xep_0280",))
    bob_b = await login(args, "bob", "b", ("xep_0280",))
    for c in (bob_a, bob_b):
        try:
            await c.plugin["xep_0280"].enable(timeout=TIMEOUT)
        except IqError as e:
            fail(f"{c.boundjid} could not enable carbons: {e.iq}")

    # alice -> bob/a: bob/a gets it, bob/b gets a received carbon.
    alice.send_message(mto=f"{b_jid}/a", mbody="to a", mtype="chat")
    await expect_body(bob_a, a_jid, "to a", "alice's message at bob/a")
    kind, inner = await wait(bob_b.carbons.get(), "the received carbon at bob/b")
    check(kind == "received", f"bob/b got a {kind} carbon, expected received")
    check(inner["body"] == "to a" and inner["from"].bare == a_jid and str(inner["to"]) == f"{b_jid}/a",
          f"received carbon wrong: {inner}")
    received = {"from": str(inner["from"]), "to": str(inner["to"]), "body": inner["body"]}

    # bob/a -> alice: alice gets it, bob/b gets a sent carbon.
    bob_a.send_message(mto=a_jid, mbody="from a", mtype="chat")
    await expect_body(alice, b_jid, "from a", "bob/a's message at alice")
    kind, inner = await wait(bob_b.carbons.get(), "the sent carbon at bob/b")
    check(kind == "sent", f"bob/b got a {kind} carbon, expected sent")
    check(inner["body"] == "from a" and str(inner["from"]) == f"{b_jid}/a" and inner["to"].bare == a_jid,
          f"sent carbon wrong: {inner}")
    sent = {"from": str(inner["from"]), "to": str(inner["to"]), "body": inner["body"]}

    # Nothing else: no carbons at bob/a of its own traffic, no plain copies at bob/b.
    for c in (bob_a, bob_b, alice):
        await c.barrier(args.domain)
    check(bob_a.carbons.empty(), "bob/a got a carbon of its own traffic")
    check(bob_b.carbons.empty() and bob_b.messages.empty(), "bob/b got more than the two carbons")

    for c in (alice, bob_a, bob_b):
        c.disconnect()
    return {"received_carbon": received, "sent_carbon": sent}


# --- XEP-0191 --------------------------------------------------------------


async def blocking(args):
    a_jid, b_jid = f"alice@{args.domain}", f"bob@{args.domain}"
    alice = await login(args, "alice", "laptop")
    bob = await login(args, "bob", "phone", ("xep_0191",))
    blk = bob.plugin["xep_0191"]

    try:
        await blk.block(slixmpp.JID(a_jid), timeout=TIMEOUT)
        blocklist = await blk.get_blocked_jids(timeout=TIMEOUT)
    except IqError as e:
        fail(f"block / blocklist failed: {e.iq}")
    check({j.bare for j in blocklist} == {a_jid}, f"blocklist after block: {blocklist}")

    alice.send_message(mto=b_jid, mbody="blocked", mtype="chat")
    err = await wait(alice.errors.get(), "the error for the blocked message")
    condition = err["error"]["condition"]
    check(condition == "service-unavailable", f"blocked message error is {condition}: {err}")
    check(err["from"].bare == b_jid, f"error from {err['from']}")
    await bob.barrier(args.domain)
    check(bob.messages.empty(), f"bob received a message from a blocked contact: {bob.messages._queue}")

    try:
        await blk.unblock(slixmpp.JID(a_jid), timeout=TIMEOUT)
        after = await blk.get_blocked_jids(timeout=TIMEOUT)
    except IqError as e:
        fail(f"unblock failed: {e.iq}")
    check(not after, f"blocklist after unblock: {after}")
    alice.send_message(mto=b_jid, mbody="unblocked", mtype="chat")
    await expect_body(bob, a_jid, "unblocked", "the message after unblocking")
    await alice.barrier(args.domain)
    check(alice.errors.empty(), "alice got an error after unblocking")

    alice.disconnect()
    bob.disconnect()
    return {
        "blocklist": sorted(j.bare for j in blocklist),
        "blocked_error": condition,
        "blocklist_after_unblock": sorted(j.bare for j in after),
        "delivered_after_unblock": True,
    }


# --- XEP-0198 --------------------------------------------------------------


async def sm_resume(args):
    a_jid, b_jid = f"alice@{args.domain}", f"bob@{args.domain}"
    count, cut_at, gap = 100, 20, 0.5
    alice = await login(args, "alice", "laptop")

    bob = Client(f"{b_jid}/phone", "secret", args.ca, ("xep_0198",))
    sm = bob.plugin["xep_0198"]
    check(sm.allow_resume, "xep_0198 does not request resumption")
    events = {"session_start": 0, "session_bind": 0, "sm_enabled": 0, "session_resumed": 0, "sm_failed": 0}
    enabled, resumed, disconnected = asyncio.Event(), asyncio.Event(), asyncio.Event()
    stanzas = {}

    def counter(name, flag=None):
        def on(stanza):
            events[name] += 1
            if name in ("sm_enabled", "session_resumed"):
                stanzas[name] = stanza
            if flag is not None:
                flag.set()
        return on

    bob.add_event_handler("session_start", counter("session_start"))
    bob.add_event_handler("session_bind", counter("session_bind"))
    bob.add_event_handler("sm_enabled", counter("sm_enabled", enabled))
    bob.add_event_handler("session_resumed", counter("session_resumed", resumed))
    bob.add_event_handler("sm_failed", counter("sm_failed"))
    bob.connect(host=args.host, port=args.port)
    await wait(bob.online.wait(), "bob to log in")
    await wait(enabled.wait(), "bob's <enabled/>")
    en = stanzas["sm_enabled"]
    check(en["resume"] in (True, "true", "1") and en["id"], f"<enabled/> without resumption: {en}")
    sm_id = en["id"]
    await bob.barrier(args.domain)

    received = []
    cut = {}

    async def reconnect(_):
        cut["received_at_disconnect"] = len(received)
        disconnected.set()
        await asyncio.sleep(gap)  # alice keeps sending while bob is away
        cut["alice_sent_at_reconnect"] = sent
        bob.connect(host=args.host, port=args.port)

    def on_message(msg):
        if msg["from"].bare != a_jid:
            return
        received.append(msg["body"])
        if msg["body"] == f"sm {cut_at}" and "alice_sent_at_cut" not in cut:
            cut["alice_sent_at_cut"] = sent
            cut["received_at_cut"] = len(received)
            bob.add_event_handler("disconnected", reconnect, disposable=True)
            # Abrupt: drop the TCP connection, no </stream:stream>, no close_notify.
            bob.transport.abort()

    bob.del_event_handler("message", bob.on_message)
    bob.add_event_handler("message", on_message)

    # A burst of 2 * cut_at + 1 messages, so that some are in flight when the
    # cut comes; then, once bob is surely away, the rest paced over his gap and
    # reconnection.
    sent = 0
    for i in range(count):
        alice.send_message(mto=b_jid, mbody=f"sm {i}", mtype="chat")
        sent = i + 1
        if i == 2 * cut_at:
            await wait(disconnected.wait(), "bob's connection to drop")
        if i >= 2 * cut_at:
            await asyncio.sleep(0.01)

    await wait(resumed.wait(), "bob's stream to be resumed", timeout=TIMEOUT)
    cut["alice_sent_at_resume"] = sent
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while len(received) < count and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    # Nothing more can come: what alice sent is routed before her ping is
    # answered, and what was routed to bob reaches him before his answer.
    await alice.barrier(args.domain)
    await bob.barrier(args.domain)
    expected = [f"sm {i}" for i in range(count)]
    check(received == expected,
          f"bob received {len(received)} messages, distinct {len(set(received))}, "
          f"missing {[b for b in expected if b not in received]}, "
          f"duplicated {sorted({b for b in received if received.count(b) > 1})}, "
          f"in order {received == sorted(received, key=lambda b: int(b.split()[1]))}; cut {cut}")
    check(events["session_resumed"] == 1, f"events {events}")
    check(events["session_start"] == 1 and events["session_bind"] == 1 and events["sm_enabled"] == 1,
          f"bob started a new session instead of resuming: events {events}")
    check(events["sm_failed"] == 0, f"stream management failed: events {events}")
    check(str(bob.boundjid) == f"{b_jid}/phone", f"bob's JID after resume: {bob.boundjid}")
    await alice.barrier(args.domain)
    check(alice.errors.empty(), f"alice got an error: {alice.errors._queue}")
    check(sm.enabled_in and sm.enabled_out, "stream management is off after the resume")

    rs = stanzas["session_resumed"]
    summary = {
        "resumed": True,
        "previd_matches": rs["previd"] == sm_id,
        "resumed_h": rs["h"] or 0,
        "events": events,
        "received": len(received),
        "distinct": len(set(received)),
        "in_order": True,
        "cut_after": cut["received_at_cut"],
        "received_at_disconnect": cut["received_at_disconnect"],
        "alice_sent_at_cut": cut["alice_sent_at_cut"],
        "alice_sent_at_reconnect": cut["alice_sent_at_reconnect"],
        "alice_sent_at_resume": cut["alice_sent_at_resume"],
        "handled": sm.handled,
    }
    check(summary["previd_matches"], f"<resumed previd={rs['previd']}> is not the enabled id {sm_id}")
    alice.disconnect()
    bob.disconnect()
    return summary


SCENARIOS = {"mam": mam, "carbons": carbons, "blocking": blocking, "sm_resume": sm_resume}


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", choices=SCENARIOS)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--domain", default="localhost")
    ap.add_argument("--ca", required=True)
    args = ap.parse_args()
    summary = await asyncio.wait_for(SCENARIOS[args.scenario](args), 60)
    print(json.dumps({"scenario": args.scenario, **summary}))


if __name__ == "__main__":
    asyncio.run(main())
