// xmpp.js (@xmpp/client) and FAST (XEP-0484) against a real meerkat node,
// run by tests/tests/sasl2.rs. Logins one after another, each a new client
// sharing one token store, as an app restarting would:
//   1. the password, over SASL2 + Bind2; xmpp.js asks for a token;
//   2. the token only (a wrong password): one round trip; the node rotates
//      it (the test's node rotates on every login with the token in use)
//      and sends the next one;
//   3. the rotated token only, now the one in use;
//   4. the token only again, rotated in turn;
//   5. a token the node does not know, with the right password: xmpp.js
//      falls back to the password and asks for a new token;
//   6. that new token only;
//   7. that token, expired (its expiry in the past), with the right password:
//      xmpp.js does not try it, logs in with the password and asks for a new one.
// Prints one JSON line: for each login its JID, mechanism, the elements the
// client sent from <authenticate/> to "online", and the token it ended with;
// and the wire exchange of each.
//
//   node fast.mjs --service ws://127.0.0.1:5280/ws-xmpp --domain localhost \
//     --username alice --password secret [--agent USER-AGENT-ID]

import { client, xml } from "@xmpp/client";
import { parseArgs } from "node:util";

const { values: opts } = parseArgs({
  options: {
    service: { type: "string" },
    domain: { type: "string", default: "localhost" },
    username: { type: "string" },
    password: { type: "string" },
    timeout: { type: "string", default: "20000" },
    agent: { type: "string", default: "8a3f2d1e-4b5c-4d6e-9f70-1234567890ab" },
  },
});

let stored = null;
const summary = { logins: [] };

async function login(password, label) {
  const x = client({
    service: opts.service,
    domain: opts.domain,
    username: opts.username,
    password,
    resource: "fast",
    userAgent: xml("user-agent", { id: opts.agent }, [
      xml("software", {}, "meerkat-tests"),
      xml("device", {}, "ci"),
    ]),
  });
  x.fast.fetchToken = async () => stored;
  x.fast.saveToken = async (t) => {
    stored = t;
  };
  x.fast.deleteToken = async () => {
    stored = null;
  };
  const record = { label, jid: null, mechanisms: [], sent: [], wire: [], error: null };
  let authenticating = false;
  x.on("send", (el) => {
    if (el.is("authenticate", "urn:xmpp:sasl:2")) {
      authenticating = true;
      record.mechanisms.push(el.attrs.mechanism);
    }
    if (authenticating) {
      record.sent.push(el.name);
      record.wire.push(`C: ${el.toString()}`);
    }
  });
  x.on("element", (el) => {
    if (authenticating) record.wire.push(`S: ${el.toString()}`);
  });
  x.on("online", () => {
    authenticating = false;
  });
  x.on("error", (e) => {
    record.error = String(e);
  });
  const timer = setTimeout(() => {
    console.log(JSON.stringify({ ...summary, failed: label, record }));
    process.exit(1);
  }, Number(opts.timeout));
  const jid = await x.start();
  clearTimeout(timer);
  record.jid = jid.toString();
  // The session works: the server answers a ping.
  await x.iqCaller.request(xml("iq", { type: "get", to: opts.domain }, xml("ping", "urn:xmpp:ping")));
  record.token = stored ? stored.token : null;
  record.tokenMechanism = stored ? stored.mechanism : null;
  await x.stop();
  summary.logins.push(record);
}

try {
  await login(opts.password, "password");
  await login("wrong-password", "token");
  await login("wrong-password", "rotated token");
  await login("wrong-password", "rotated token again");
  stored = { mechanism: "HT-SHA-256-NONE", token: "not-a-token-the-server-issued", expiry: "2099-01-01T00:00:00Z" };
  await login(opts.password, "unknown token");
  await login("wrong-password", "new token");
  stored = { ...stored, expiry: "2000-01-01T00:00:00Z" };
  await login(opts.password, "expired token");
  console.log(JSON.stringify(summary));
  process.exit(0);
} catch (e) {
  console.log(JSON.stringify({ ...summary, error: String(e) }));
  process.exit(1);
}
