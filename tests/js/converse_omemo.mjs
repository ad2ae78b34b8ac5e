// converse.js with OMEMO (XEP-0384) in headless Chromium, two users against a
// real meerkat node, run by tests/tests/converse.rs. A local HTTP server on
// 127.0.0.1 serves a page that loads converse.js (with its OMEMO library and
// wasm, all from node_modules) and logs the JID of its query string in over
// --ws. alice and bob each log in in a page of their own; alice adds bob as a
// contact (converse subscribes back on both sides), both set up OMEMO
// (device lists and bundles on PEP), alice opens the chat with bob, OMEMO is
// on for it, she types the message and sends it with Enter; bob's page
// decrypts it; bob answers, encrypted, and alice's page decrypts the answer.
// Screenshots of both pages go to --screenshots (a directory); one JSON
// summary line is printed; exits 0 when everything happened, 1 otherwise.
//
//   node converse_omemo.mjs --ws ws://127.0.0.1:5280/ws-xmpp --password secret \
//     --screenshots out/ [--chromium /usr/bin/chromium] [--timeout 60000]

import { chromium } from "playwright-core";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { startPageServer } from "./page_server.mjs";

const { values: opts } = parseArgs({
  options: {
    ws: { type: "string" },
    password: { type: "string" },
    screenshots: { type: "string" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
    timeout: { type: "string", default: "60000" },
  },
});
for (const required of ["ws", "password", "screenshots"]) {
  if (!opts[required]) {
    console.error(`converse_omemo.mjs: --${required} is required`);
    process.exit(2);
  }
}
const STEP = Number(opts.timeout);
const ALICE = "alice@localhost";
const BOB = "bob@localhost";
const TO_BOB = "Only Bob can read this: OMEMO through Meerkat's PEP";
const TO_ALICE = "And only Alice can read this answer";

const summary = { ok: false, steps: [], console_errors: [], blocked: [] };
const step = (name) => {
  summary.steps.push(name);
  console.error(`converse_omemo.mjs: ${name}`);
};
function finish(code) {
  console.log(JSON.stringify(summary));
  process.exit(code);
}

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "node_modules", "converse.js", "dist");

function page_html(jid) {
  const config = {
    assets_path: "/dist/",
    websocket_url: opts.ws,
    discover_connection_methods: false,
    authentication: "login",
    auto_login: true,
    auto_reconnect: false,
    jid,
    password: opts.password,
    view_mode: "fullscreen",
    i18n: "en",
    loglevel: "info",
    whitelisted_plugins: ["meerkat-test"],
    omemo_default: true,
    auto_subscribe: true,
    play_sounds: false,
    show_desktop_notifications: false,
  };
  return `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>converse.js with OMEMO on Meerkat</title>
  <link rel="stylesheet" href="/dist/converse.min.css">
</head>
<body class="converse-fullscreen">
<script type="module">
  import converse from "/dist/converse.min.js";
  converse.plugins.add("meerkat-test", {
    initialize() {
      const { api } = this._converse;
      const state = (window.meerkat = { api, connected: false, omemo: false });
      api.listen.on("connected", () => (state.connected = true));
      api.listen.on("OMEMOInitialized", () => (state.omemo = true));
    },
  });
  converse.initialize(${JSON.stringify(config).replace(/</g, "\\u003c")});
</script>
</body>
</html>`;
}

// libomemo loads its wasm from the page's directory, where a deployment puts it.
const { origin, server, served } = await startPageServer({
  dist,
  page: (url) => page_html(url.searchParams.get("jid")),
  aliases: { "/curve25519_compiled.wasm": "curve25519_compiled.wasm" },
});
summary.missing = served.missing;

const overall = setTimeout(() => {
  summary.failure = `the whole run took more than ${6 * STEP} ms (last step: ${summary.steps.at(-1)})`;
  finish(1);
}, 6 * STEP);

let browser;
const pages = {};
let code = 1;
try {
  step("launch chromium");
  browser = await chromium.launch({
    executablePath: opts.chromium,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    timeout: STEP,
  });
  for (const jid of [ALICE, BOB]) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: "en-US" });
    context.setDefaultTimeout(STEP);
    await context.route("**/*", (route) => {
      const url = route.request().url();
      if (url.startsWith(`${origin}/`)) return route.continue();
      summary.blocked.push(url);
      return route.abort("blockedbyclient");
    });
    const page = await context.newPage();
    page.on("console", (msg) => {
      if (msg.type() === "error") summary.console_errors.push(`${jid}: ${msg.text()}`);
    });
    page.on("pageerror", (err) => summary.console_errors.push(`${jid}: ${err}`));
    pages[jid] = page;
    step(`${jid} logs in`);
    await page.goto(`${origin}/?jid=${encodeURIComponent(jid)}`, { waitUntil: "load" });
    await page.waitForFunction(() => window.meerkat?.connected === true, null, { timeout: STEP });
  }
  const alice = pages[ALICE];
  const bob = pages[BOB];

  step("alice adds bob; both subscribe");
  await alice.evaluate(async (jid) => {
    const { api } = window.meerkat;
    await api.waitUntil("rosterContactsFetched");
    await api.contacts.add({ jid, name: "Bob" });
  }, BOB);
  for (const [page, other] of [[alice, BOB], [bob, ALICE]]) {
    await page.waitForFunction(
      async (jid) => (await window.meerkat.api.contacts.get(jid))?.get("subscription") === "both",
      other,
      { timeout: STEP, polling: 200 },
    );
  }

  step("both set OMEMO up (device lists and bundles on PEP)");
  for (const page of [alice, bob]) {
    await page.waitForFunction(() => window.meerkat.omemo === true, null, { timeout: STEP });
  }

  step("alice opens the chat with bob, OMEMO on");
  await alice.evaluate(async (jid) => {
    await window.meerkat.api.chats.open(jid);
  }, BOB);
  await alice.waitForFunction(
    async (jid) => {
      const chat = await window.meerkat.api.chats.get(jid);
      if (!chat?.get("omemo_supported")) return false;
      if (!chat.get("omemo_active")) chat.save({ omemo_active: true });
      return true;
    },
    BOB,
    { timeout: STEP, polling: 250 },
  );

  step("alice types the message and sends it");
  const textarea = alice.locator(`converse-chat[jid="${BOB}"] textarea.chat-textarea`);
  await textarea.waitFor({ state: "visible" });
  await textarea.click();
  await textarea.pressSequentially(TO_BOB, { delay: 5 });
  await textarea.press("Enter");
  summary.sent_encrypted = await alice.waitForFunction(
    async ({ jid, body }) => {
      const chat = await window.meerkat.api.chats.get(jid);
      const m = chat?.messages.findWhere({ message: body }) ?? chat?.messages.findWhere({ body });
      return m ? m.get("is_encrypted") === true : false;
    },
    { jid: BOB, body: TO_BOB },
    { timeout: STEP, polling: 250 },
  ).then(() => true);

  step("bob's page decrypts it");
  await bob.waitForFunction(
    async ({ jid, body }) => {
      const chat = await window.meerkat.api.chats.get(jid);
      const m = chat?.messages.find((m) => m.get("body") === body || m.get("message") === body);
      return !!m && m.get("is_encrypted") === true;
    },
    { jid: ALICE, body: TO_BOB },
    { timeout: STEP, polling: 250 },
  );
  summary.bob_decrypted = TO_BOB;

  step("bob answers, encrypted; alice's page decrypts it");
  await bob.evaluate(async ({ jid, body }) => {
    const chat = await window.meerkat.api.chats.open(jid);
    chat.save({ omemo_active: true });
    await chat.sendMessage({ body });
  }, { jid: ALICE, body: TO_ALICE });
  await alice.waitForFunction(
    async ({ jid, body }) => {
      const chat = await window.meerkat.api.chats.get(jid);
      const m = chat?.messages.find((m) => (m.get("body") === body || m.get("message") === body) && m.get("sender") === "them");
      return !!m && m.get("is_encrypted") === true;
    },
    { jid: BOB, body: TO_ALICE },
    { timeout: STEP, polling: 250 },
  );
  summary.alice_decrypted = TO_ALICE;
  summary.ok = true;
  code = 0;
} catch (err) {
  summary.failure = `${summary.steps.at(-1)}: ${err?.message ?? err}`;
  console.error(`converse_omemo.mjs: failed at "${summary.steps.at(-1)}": ${err?.stack ?? err}`);
}

summary.screenshots = [];
for (const [jid, page] of Object.entries(pages)) {
  const path = join(opts.screenshots, `converse-omemo-${jid.split("@")[0]}.png`);
  try {
    await page.screenshot({ path, fullPage: true, timeout: STEP });
    summary.screenshots.push(path);
  } catch (err) {
    summary.screenshot_error = String(err?.message ?? err);
    code = 1;
  }
}
clearTimeout(overall);
await browser?.close().catch(() => {});
server.close();
finish(code);
