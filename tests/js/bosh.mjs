// stanza (StanzaJS) over BOSH (XEP-0124/0206) against a real meerkat node,
// run by tests/tests/bosh.rs. Two clients log in over BOSH only (no
// WebSocket): alice sends bob a message and one to --peer (a client that
// answers "echo: <body>"), bob answers alice, and each waits for what it
// should receive. Prints one JSON summary line and exits 0 once everything
// arrived, 1 otherwise.
//
//   node bosh.mjs --url http://127.0.0.1:5280/http-bind --domain localhost \
//     --alice alice --bob bob --password secret --peer carol@localhost/py

import * as XMPP from "stanza";
import { parseArgs } from "node:util";

const { values: opts } = parseArgs({
  options: {
    url: { type: "string" },
    domain: { type: "string", default: "localhost" },
    alice: { type: "string" },
    bob: { type: "string" },
    password: { type: "string" },
    peer: { type: "string" },
    timeout: { type: "string", default: "60000" },
  },
});

const summary = { ok: false };

function start(name, user) {
  const c = XMPP.createClient({
    jid: `${user}@${opts.domain}`,
    password: opts.password,
    resource: "stanza",
    transports: { websocket: false, bosh: opts.url },
  });
  const state = { jid: null, mechanism: null, transport: null, received: [], errors: [] };
  summary[name] = state;
  c.on("auth:success", () => {});
  c.on("raw:outgoing", (data) => {
    const m = /<auth [^>]*mechanism="([^"]+)"/.exec(data);
    if (m) state.mechanism = m[1];
  });
  c.on("stream:error", (e) => state.errors.push(`stream error: ${JSON.stringify(e)}`));
  c.on("auth:failed", () => state.errors.push("auth failed"));
  c.on("message", (m) => {
    if (m.body) {
      state.received.push({ from: m.from, body: m.body });
      check();
    }
  });
  c.on("session:started", () => {
    state.jid = c.jid;
    state.transport = c.transport && c.transport.constructor ? c.transport.constructor.name : null;
    c.sendPresence();
    ready();
  });
  return { c, state };
}

const alice = start("alice", opts.alice);
const bob = start("bob", opts.bob);
const aliceJid = () => alice.state.jid;
const bobJid = () => bob.state.jid;

let started = 0;
function ready() {
  started += 1;
  if (started < 2) return;
  alice.c.sendMessage({ to: bobJid(), type: "chat", body: "alice to bob over bosh" });
  alice.c.sendMessage({ to: opts.peer, type: "chat", body: "hello from bosh" });
}

bob.c.on("message", (m) => {
  if (m.body === "alice to bob over bosh") {
    bob.c.sendMessage({ to: m.from, type: "chat", body: "bob to alice over bosh" });
  }
});

const has = (state, body) => state.received.some((m) => m.body === body);
let finished = false;
function check() {
  if (finished) return;
  if (
    has(bob.state, "alice to bob over bosh") &&
    has(alice.state, "bob to alice over bosh") &&
    has(alice.state, "echo: hello from bosh")
  ) {
    finish(true);
  }
}

function finish(ok) {
  if (finished) return;
  finished = true;
  summary.ok = ok;
  const ends = [alice.c, bob.c].map(
    (c) => new Promise((resolve) => {
      c.once("disconnected", resolve);
      c.disconnect();
      setTimeout(resolve, 5000);
    }),
  );
  Promise.all(ends).then(() => {
    console.log(JSON.stringify(summary));
    process.exit(ok ? 0 : 1);
  });
}

setTimeout(() => {
  summary.timeout = true;
  finish(false);
}, Number(opts.timeout));

alice.c.connect();
bob.c.connect();
