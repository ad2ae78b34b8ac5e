// stanza (StanzaJS) logging in with SASL EXTERNAL (XEP-0178) and a client
// certificate, over wss:// (RFC 7395) or HTTPS BOSH (XEP-0206), in headless
// Chromium, run by tests/tests/external.rs.
//
// Nothing of stanza is touched: esbuild bundles the published package for the
// browser (its own "browser" field picks its browser platform), and the
// browser's WebSocket and fetch carry the connection. The certificate is the
// browser's: a private NSS database (Chromium's store on Linux, under a
// temporary $HOME) holds the client certificate and key and trusts the node's
// certificate as a peer; Chromium presents the client certificate because the
// policy tests/js/chromium-policy.json (AutoSelectCertificateForUrls for
// https://localhost) is installed in /etc/chromium/policies/managed/, which
// .ci/run does. The page is served at the node's own origin (Playwright
// answers that request; it never reaches the node), so that BOSH's fetch is
// same-origin and goes with the certificate.
//
// Prints one JSON line: {"jid", "mechanism", "transport"} once the session
// started and the server answered a ping, or {"error"}; exits 0 only on a
// login with EXTERNAL.
//
//   node external.mjs --url wss://localhost:5443/ws-xmpp --jid alice@localhost \
//     --ca node.pem --cert alice.pem --key alice.key
//
// Needs Debian's chromium, openssl and libnss3-tools (certutil, pk12util).

import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { build } from "esbuild";
import { chromium } from "playwright-core";

const { values: opts } = parseArgs({
  options: {
    url: { type: "string" },
    jid: { type: "string" },
    ca: { type: "string" },
    cert: { type: "string" },
    key: { type: "string" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
    timeout: { type: "string", default: "30000" },
  },
});
for (const required of ["url", "jid", "ca", "cert", "key"]) {
  if (!opts[required]) {
    console.error(`external.mjs: --${required} is required`);
    process.exit(2);
  }
}

const here = dirname(fileURLToPath(import.meta.url));
const POLICY = "/etc/chromium/policies/managed/meerkat-tests.json";
const home = mkdtempSync(join(tmpdir(), "meerkat-chromium-"));
let browser;

async function finish(result, ok) {
  console.log(JSON.stringify(result));
  await browser?.close().catch(() => {});
  rmSync(home, { recursive: true, force: true });
  process.exit(ok ? 0 : 1);
}

const overall = setTimeout(() => finish({ error: "timed out" }, false), 3 * Number(opts.timeout));

// ------------------------------------------------------------ the browser's certificate store

const wanted = readFileSync(join(here, "chromium-policy.json"), "utf8");
if (!existsSync(opts.chromium)) {
  await finish({ error: `no Chromium at ${opts.chromium}: apt-get install chromium` }, false);
}
if (!existsSync(POLICY) || JSON.stringify(JSON.parse(readFileSync(POLICY, "utf8"))) !== JSON.stringify(JSON.parse(wanted))) {
  await finish(
    { error: `Chromium's policy ${POLICY} is missing or differs: install -D -m 644 tests/js/chromium-policy.json ${POLICY}` },
    false,
  );
}
const run = (cmd, args) => {
  try {
    execFileSync(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
  } catch (e) {
    throw new Error(`${cmd} ${args.join(" ")}: ${e.stderr ?? e.message} (needs Debian's openssl and libnss3-tools)`);
  }
};
try {
  const db = `sql:${join(home, ".pki", "nssdb")}`;
  const p12 = join(home, "client.p12");
  run("mkdir", ["-p", join(home, ".pki", "nssdb")]);
  run("certutil", ["-N", "-d", db, "--empty-password"]);
  run("openssl", ["pkcs12", "-export", "-in", opts.cert, "-inkey", opts.key, "-out", p12, "-passout", "pass:", "-name", "client"]);
  run("pk12util", ["-d", db, "-i", p12, "-W", ""]);
  // The node's self-signed certificate, trusted as a peer (not as a CA).
  run("certutil", ["-A", "-d", db, "-n", "meerkat-node", "-t", "P,,", "-i", opts.ca]);
} catch (e) {
  await finish({ error: String(e.message ?? e) }, false);
}

// ------------------------------------------------------------ the page

const bundle = await build({
  stdin: { contents: 'import { createClient } from "stanza"; export { createClient };', resolveDir: here },
  bundle: true,
  format: "esm",
  platform: "browser",
  write: false,
  logLevel: "error",
});
const url = new URL(opts.url);
const origin = `https://${url.host}`;
const page_html = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>stanza with a client certificate</title></head>
<body><script type="module">
  import * as XMPP from "/meerkat-test/stanza.js";
  window.login = (o) => new Promise((resolve) => {
    const client = XMPP.createClient({
      jid: o.jid,
      resource: "cert",
      transports: o.bosh ? { websocket: false, bosh: o.url } : { websocket: o.url, bosh: false },
    });
    let mechanism = null;
    // What happened on the wire, for the failure message.
    const trace = [];
    client.on("raw:incoming", (data) => trace.push("in: " + data.slice(0, 300)));
    client.on("raw:outgoing", (data) => {
      trace.push("out: " + data.slice(0, 300));
      const m = /<auth [^>]*mechanism="([^"]+)"/.exec(data);
      if (m) mechanism = m[1];
    });
    const done = (r) => { resolve(r.error ? { mechanism, ...r, trace } : { mechanism, ...r }); client.disconnect(); };
    client.on("auth:failed", () => done({ error: "auth failed" }));
    client.on("stream:error", (e) => done({ error: "stream error: " + JSON.stringify(e) }));
    client.on("disconnected", () => done({ error: "disconnected" }));
    client.on("session:started", async () => {
      try {
        await client.ping(client.jid.split("@")[1].split("/")[0]);
        done({ jid: client.jid, transport: o.bosh ? "bosh" : "websocket" });
      } catch (e) {
        done({ error: "ping: " + e });
      }
    });
    client.connect();
  });
</script></body></html>`;

try {
  browser = await chromium.launch({
    executablePath: opts.chromium,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    env: { ...process.env, HOME: home },
    timeout: Number(opts.timeout),
  });
  const context = await browser.newContext();
  context.setDefaultTimeout(Number(opts.timeout));
  await context.route(`${origin}/meerkat-test/**`, (route) => {
    const path = new URL(route.request().url()).pathname;
    if (path === "/meerkat-test/stanza.js") {
      return route.fulfill({ status: 200, contentType: "text/javascript", body: bundle.outputFiles[0].text });
    }
    return route.fulfill({ status: 404, body: "" });
  });
  const page = await context.newPage();
  // The page is opened at the node's origin, as a web client served by the
  // XMPP host would be: that request is where Chromium picks the client
  // certificate (it picks none for a WebSocket handshake on its own, and
  // reuses the one picked for the origin). The page opened is the endpoint
  // itself over https (a short text for a browser's GET); the client's page
  // is then set in its place.
  await page.goto(opts.url.replace(/^wss:/, "https:"));
  await page.setContent(page_html);
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  await page.waitForFunction(() => typeof window.login === "function");
  const result = await page.evaluate((o) => window.login(o), {
    url: opts.url,
    jid: opts.jid,
    bosh: url.protocol === "https:",
  });
  clearTimeout(overall);
  if (errors.length) result.page_errors = errors;
  await finish(result, !result.error && result.mechanism === "EXTERNAL");
} catch (e) {
  await finish({ error: String(e.message ?? e) }, false);
}
