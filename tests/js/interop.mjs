// xmpp.js (@xmpp/client) against a real meerkat node, run by
// tests/tests/websocket.rs: one client over WebSocket (RFC 7395), one over
// TCP with STARTTLS. Each logs in, sends a message to the other and one to
// --peer (a slixmpp user, tests/python/echo_peer.py, that answers
// "echo: <body>"), and waits for what it should receive. Prints one JSON summary line and exits
// 0 once everything arrived, 1 otherwise.
//
//   node interop.mjs --ws ws://127.0.0.1:5280/ws-xmpp --tcp xmpp://127.0.0.1:5222 \
//     --domain localhost --ws-user alice --tcp-user bob --password secret --peer carol@localhost
//
// The node's self-signed certificate must be trusted (NODE_EXTRA_CA_CERTS).
// Node 20 needs --experimental-websocket for the global WebSocket that
// @xmpp/websocket uses.

import { client, xml } from "@xmpp/client";
import { parseArgs } from "node:util";

const { values: opts } = parseArgs({
  options: {
    ws: { type: "string" },
    tcp: { type: "string" },
    domain: { type: "string", default: "localhost" },
    "ws-user": { type: "string" },
    "tcp-user": { type: "string" },
    password: { type: "string" },
    peer: { type: "string" },
    timeout: { type: "string", default: "30000" },
  },
});

const summary = {};

function start(name, service, username) {
  const xmpp = client({ service, domain: opts.domain, username, password: opts.password, resource: name });
  const state = { jid: null, mechanism: null, profile: null, received: [], errors: [] };
  summary[name] = state;
  xmpp.on("error", (err) => state.errors.push(String(err)));
  xmpp.on("send", (el) => {
    if (el.is("auth")) {
      state.mechanism = el.attrs.mechanism;
      state.profile = "sasl";
    }
    if (el.is("authenticate", "urn:xmpp:sasl:2")) {
      state.mechanism = el.attrs.mechanism;
      state.profile = el.getChild("bind", "urn:xmpp:bind:0") ? "sasl2+bind2" : "sasl2";
    }
  });
  xmpp.on("stanza", (stanza) => {
    if (stanza.is("message") && stanza.getChild("body")) {
      state.received.push({ from: stanza.attrs.from, body: stanza.getChildText("body") });
      check();
    }
  });
  xmpp.on("online", (address) => {
    state.jid = address.toString();
  });
  return { xmpp, state };
}

const ws = start("ws", opts.ws, opts["ws-user"]);
const tcp = start("tcp", opts.tcp, opts["tcp-user"]);

function has(state, body) {
  return state.received.some((m) => m.body === body);
}

let done;
const finished = new Promise((resolve) => (done = resolve));

function check() {
  if (
    has(ws.state, "tcp to ws") &&
    has(ws.state, "echo: hello from ws") &&
    has(tcp.state, "ws to tcp") &&
    has(tcp.state, "echo: hello from tcp")
  ) {
    done(true);
  }
}

const chat = (to, body) => xml("message", { to, type: "chat" }, xml("body", {}, body));

const timer = setTimeout(() => done(false), Number(opts.timeout));
let ok = false;
try {
  await Promise.all([ws.xmpp.start(), tcp.xmpp.start()]);
  await ws.xmpp.send(xml("presence"));
  await tcp.xmpp.send(xml("presence"));
  await ws.xmpp.send(chat(tcp.state.jid, "ws to tcp"));
  await tcp.xmpp.send(chat(ws.state.jid, "tcp to ws"));
  await ws.xmpp.send(chat(opts.peer, "hello from ws"));
  await tcp.xmpp.send(chat(opts.peer, "hello from tcp"));
  ok = await finished;
} catch (err) {
  summary.failure = String(err?.stack ?? err);
}
clearTimeout(timer);
summary.ok = ok;
// Graceful ends: <close/> over WebSocket, </stream:stream> over TCP.
await Promise.allSettled([ws.xmpp.stop(), tcp.xmpp.stop()]);
console.log(JSON.stringify(summary));
process.exit(ok ? 0 : 1);
