// stanza (StanzaJS) logging in with SASL EXTERNAL (XEP-0178) and a client
// certificate, over wss:// (RFC 7395) or HTTPS BOSH (XEP-0206), run by
// tests/tests/external.rs. The certificate goes to stanza's WebSocket (the
// `ws` package, which takes TLS options) and to its fetch (through undici's
// global dispatcher); the node's certificate is verified against --ca.
// Prints one JSON line: {"jid", "mechanism", "transport"} once the session
// started and the server answered a ping, or {"error"}; exits 0 only on a
// login with EXTERNAL.
//
//   node external.mjs --url wss://localhost:5443/ws-xmpp --jid alice@localhost \
//     --ca node.pem --cert alice.pem --key alice.key

import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import * as XMPP from "stanza";
import platform from "stanza/platform/node/index.js";
import { Agent, setGlobalDispatcher } from "undici";
import WS from "ws";

const { values: opts } = parseArgs({
  options: {
    url: { type: "string" },
    jid: { type: "string" },
    ca: { type: "string" },
    cert: { type: "string" },
    key: { type: "string" },
    timeout: { type: "string", default: "30000" },
  },
});

const tls = {
  ca: readFileSync(opts.ca),
  cert: readFileSync(opts.cert),
  key: readFileSync(opts.key),
};
setGlobalDispatcher(new Agent({ connect: tls }));
platform.WebSocket = class extends WS {
  constructor(url, protocols) {
    super(url, protocols, tls);
  }
};

const bosh = opts.url.startsWith("http");
const client = XMPP.createClient({
  jid: opts.jid,
  resource: "cert",
  transports: bosh ? { websocket: false, bosh: opts.url } : { websocket: opts.url, bosh: false },
});
let mechanism = null;
client.on("raw:outgoing", (data) => {
  const m = /<auth [^>]*mechanism="([^"]+)"/.exec(data);
  if (m) mechanism = m[1];
});

function finish(result, ok) {
  console.log(JSON.stringify(result));
  process.exit(ok ? 0 : 1);
}

client.on("auth:failed", () => finish({ error: "auth failed", mechanism }, false));
client.on("stream:error", (e) => finish({ error: `stream error: ${JSON.stringify(e)}` }, false));
client.on("session:started", async () => {
  try {
    await client.ping(client.jid.split("@")[1].split("/")[0]);
  } catch (e) {
    finish({ error: `ping: ${e}` }, false);
  }
  const transport = bosh ? "bosh" : "websocket";
  finish({ jid: client.jid, mechanism, transport }, mechanism === "EXTERNAL");
});
setTimeout(() => finish({ error: "timed out", mechanism }, false), Number(opts.timeout));
client.connect();
