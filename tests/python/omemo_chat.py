"""Two slixmpp clients with slixmpp-omemo (unmodified, pinned in
requirements.txt) exchange OMEMO-encrypted messages through a Meerkat
node's PEP: each publishes its device list and bundles (publish-options
access_model=open), learns the other's from PEP notifications or by
fetching them, and decrypts what the other sent.

Subcommand:
  contacts     alice and bob subscribe to each other's presence first, so
               device lists reach each by +notify notifications
  strangers    no subscription: each fetches the other's device list and
               bundles from PEP itself

Usage: omemo_chat.py SCENARIO --port P --ca CERT [--host H] [--domain D]
Accounts alice and bob (password "secret") must exist. Exit status 0 means
both messages were decrypted; the last line printed is a JSON summary.
"""

import argparse
import asyncio
import ssl

import slixmpp
from omemo.storage import Just, Maybe, Nothing, Storage
from peer_common import check, fail, out, wait
from slixmpp.plugins import register_plugin
from slixmpp_omemo import TrustLevel, XEP_0384

TIMEOUT = 30


class MemoryStorage(Storage):
    """OMEMO's key-value storage, in memory: the test's devices live as long as the test."""

    def __init__(self):
        super().__init__()
        self.data = {}

    async def _load(self, key):
        if key in self.data:
            return Just(self.data[key])
        return Nothing()

    async def _store(self, key, value):
        self.data[key] = value

    async def _delete(self, key):
        self.data.pop(key, None)


class Omemo(XEP_0384):
    """slixmpp-omemo's plugin with in-memory storage and blind trust before verification."""

    default_config = {"fallback_message": "This message is OMEMO encrypted."}

    def plugin_init(self):
        self._memory = MemoryStorage()
        super().plugin_init()

    @property
    def storage(self):
        return self._memory

    @property
    def _btbv_enabled(self):
        return True

    async def _devices_blindly_trusted(self, blindly_trusted, identifier):
        pass

    async def _prompt_manual_trust(self, manually_trusted, identifier):
        session_manager = await self.get_session_manager()
        for device in manually_trusted:
            await session_manager.set_trust(device.bare_jid, device.identity_key, TrustLevel.TRUSTED.value)


register_plugin(Omemo)


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, ca):
        super().__init__(jid, "secret")
        self.ssl_context = ssl.create_default_context(cafile=ca)
        for plugin in ("xep_0030", "xep_0060", "xep_0163", "xep_0280", "xep_0334", "xep_0199"):
            self.register_plugin(plugin)
        self.register_plugin("xep_0384", module=Omemo)
        self.online = asyncio.Event()
        self.omemo_ready = asyncio.Event()
        self.plain = asyncio.Queue()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("omemo_initialized", lambda _: self.omemo_ready.set())
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("failed_auth", lambda _: fail(f"{jid}: authentication failed"))

    async def on_start(self, _):
        self.send_presence()
        await self.get_roster()
        self.online.set()

    async def on_message(self, msg):
        if msg["type"] not in ("chat", "normal"):
            return
        omemo = self["xep_0384"]
        if not omemo.is_encrypted(msg):
            return
        try:
            decrypted, device = await omemo.decrypt_message(msg)
        except Exception as e:  # noqa: BLE001 -- any failure fails the test with its reason
            fail(f"{self.boundjid}: decryption failed: {e!r}")
        self.plain.put_nowait((str(msg["from"].bare), decrypted["body"]))

    async def send_encrypted(self, to, body):
        msg = self.make_message(mto=slixmpp.JID(to), mtype="chat")
        msg["body"] = body
        encrypted, errors = await self["xep_0384"].encrypt_message(msg, slixmpp.JID(to))
        check(encrypted is not None, f"{self.boundjid}: nothing to send ({errors})")
        encrypted.send()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", choices=["contacts", "strangers"])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--domain", default="localhost")
    ap.add_argument("--ca", required=True)
    a = ap.parse_args()
    alice = Client(f"alice@{a.domain}/phone", a.ca)
    bob = Client(f"bob@{a.domain}/laptop", a.ca)
    for c in (alice, bob):
        c.connect(host=a.host, port=a.port)
    await wait(alice.online.wait(), "alice online", TIMEOUT)
    await wait(bob.online.wait(), "bob online", TIMEOUT)
    if a.scenario == "contacts":
        # Presence subscriptions both ways (slixmpp approves and subscribes back by default).
        alice.send_presence(pto=f"bob@{a.domain}", ptype="subscribe")
        await wait(_subscribed(alice, f"bob@{a.domain}"), "alice's subscription to bob", TIMEOUT)
        await wait(_subscribed(bob, f"alice@{a.domain}"), "bob's subscription to alice", TIMEOUT)
    await wait(alice.omemo_ready.wait(), "alice's OMEMO set-up", TIMEOUT)
    await wait(bob.omemo_ready.wait(), "bob's OMEMO set-up", TIMEOUT)

    await alice.send_encrypted(f"bob@{a.domain}", "hello bob, secretly")
    frm, body = await wait(bob.plain.get(), "bob decrypting alice's message", TIMEOUT)
    check(frm == f"alice@{a.domain}" and body == "hello bob, secretly", f"bob got {body!r} from {frm}")
    await bob.send_encrypted(f"alice@{a.domain}", "hello alice, secretly")
    frm, body = await wait(alice.plain.get(), "alice decrypting bob's reply", TIMEOUT)
    check(frm == f"bob@{a.domain}" and body == "hello alice, secretly", f"alice got {body!r} from {frm}")

    alice_devices = await (await alice["xep_0384"].get_session_manager()).get_device_information(f"bob@{a.domain}")
    out({"ok": True, "scenario": a.scenario, "bob_devices_seen_by_alice": len(alice_devices)})
    for c in (alice, bob):
        c.disconnect()


async def _subscribed(client, contact):
    while client.client_roster[contact]["subscription"] != "both":
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main())
