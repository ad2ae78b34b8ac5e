// converse.js in headless Chromium against a real meerkat node, run by
// tests/tests/converse.rs. A local HTTP server on 127.0.0.1 serves a page that
// loads converse.js from node_modules (nothing from the network: every other
// request of the page is refused) and logs --jid in over --ws (RFC 7395).
// Then, as a user would: the page adds --peer as a contact, the contact is
// clicked in the roster, the message is typed into the chat and sent with
// Enter, and the script waits until the peer's answer "echo: <message>" is
// shown in the chat. It saves a screenshot of the page to --screenshot and
// prints one JSON summary line; exits 0 when everything happened, 1 otherwise
// (the reason is in the summary's "failure" and on stderr).
//
//   node converse.mjs --ws ws://127.0.0.1:5280/ws-xmpp --jid alice@localhost \
//     --password secret --peer bob@localhost --message hello --screenshot out.png
//
// Needs Chromium (Debian's chromium package: /usr/bin/chromium, or --chromium).

import { chromium } from "playwright-core";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { startPageServer } from "./page_server.mjs";

const { values: opts } = parseArgs({
  options: {
    ws: { type: "string" },
    jid: { type: "string" },
    password: { type: "string" },
    peer: { type: "string" },
    "peer-name": { type: "string" },
    message: { type: "string", default: "Hello from converse.js" },
    screenshot: { type: "string" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
    // Milliseconds for each step; the whole run gets four times that.
    timeout: { type: "string", default: "60000" },
  },
});
for (const required of ["ws", "jid", "password", "peer", "screenshot"]) {
  if (!opts[required]) {
    console.error(`converse.mjs: --${required} is required`);
    process.exit(2);
  }
}
const STEP = Number(opts.timeout);
const peerName = opts["peer-name"] ?? opts.peer.split("@")[0].replace(/^./, (c) => c.toUpperCase());

const summary = { ok: false, jid: opts.jid, peer: opts.peer, sent: opts.message, reply_seen: null, steps: [] };
const step = (name) => {
  summary.steps.push(name);
  console.error(`converse.mjs: ${name}`);
};

function finish(code) {
  console.log(JSON.stringify(summary));
  process.exit(code);
}

if (!existsSync(opts.chromium)) {
  summary.failure = `no Chromium at ${opts.chromium}: install Debian's chromium package (apt-get install chromium)`;
  console.error(`converse.mjs: ${summary.failure}`);
  finish(1);
}

// ------------------------------------------------------------ the page

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "node_modules", "converse.js", "dist");

const page_html = `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>converse.js on Meerkat</title>
  <link rel="stylesheet" href="/dist/converse.min.css">
</head>
<body class="converse-fullscreen">
<script type="module">
  import converse from "/dist/converse.min.js";
  // A plugin that only lets the test see converse's API and connection state.
  converse.plugins.add("meerkat-test", {
    initialize() {
      const { api } = this._converse;
      const state = (window.meerkat = { api, connected: false });
      api.listen.on("connected", () => (state.connected = true));
      api.listen.on("disconnected", () => (state.connected = false));
    },
  });
  converse.initialize(${JSON.stringify({
    assets_path: "/dist/",
    websocket_url: opts.ws,
    discover_connection_methods: false,
    authentication: "login",
    auto_login: true,
    auto_reconnect: false,
    jid: opts.jid,
    password: opts.password,
    view_mode: "fullscreen",
    i18n: "en",
    loglevel: "info",
    whitelisted_plugins: ["meerkat-test"],
    // End-to-end encryption is not under test here (OMEMO needs PEP and a wasm module).
    blacklisted_plugins: ["converse-omemo", "converse-omemo-views"],
    play_sounds: false,
    show_desktop_notifications: false,
  }).replace(/</g, "\\u003c")});
</script>
</body>
</html>`;

const { origin, server, served } = await startPageServer({ dist, page: () => page_html });
summary.served = served;

// ------------------------------------------------------------ the browser

const blocked = [];
const console_errors = [];
summary.blocked = blocked;
summary.console_errors = console_errors;

let browser;
const overall = setTimeout(() => {
  summary.failure = `the whole run took more than ${4 * STEP} ms (last step: ${summary.steps.at(-1)})`;
  console.error(`converse.mjs: ${summary.failure}`);
  finish(1);
}, 4 * STEP);

let code = 1;
let page;
try {
  step("launch chromium");
  browser = await chromium.launch({
    executablePath: opts.chromium,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    timeout: STEP,
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: "en-US" });
  context.setDefaultTimeout(STEP);
  page = await context.newPage();
  page.on("console", (msg) => {
    if (msg.type() === "error") console_errors.push(msg.text());
  });
  page.on("pageerror", (err) => console_errors.push(String(err)));
  // Everything comes from our server; the page may reach nothing else (the
  // WebSocket to the node is not an HTTP request and is not routed here).
  await context.route("**/*", (route) => {
    const url = route.request().url();
    if (url.startsWith(`${origin}/`)) return route.continue();
    blocked.push(url);
    return route.abort("blockedbyclient");
  });

  step("load the page");
  await page.goto(`${origin}/`, { waitUntil: "load" });

  step("log in over WebSocket");
  await page.waitForFunction(() => window.meerkat?.connected === true, null, { timeout: STEP });
  summary.bound_jid = await page.evaluate(() => window.meerkat.api.connection.get()?.jid ?? null);

  step("add the peer as a contact");
  await page.evaluate(
    async ({ jid, name }) => {
      const { api } = window.meerkat;
      await api.waitUntil("rosterContactsFetched");
      await api.contacts.add({ jid, name });
    },
    { jid: opts.peer, name: peerName },
  );
  const contact = page.locator(`converse-roster a.open-chat[data-jid="${opts.peer}"]`);
  await contact.waitFor({ state: "visible" });

  step("see the peer online in the roster");
  await contact.locator(".contact-name--online").waitFor({ state: "visible" });

  step("open the chat from the roster");
  await contact.click();
  const chat = page.locator(`converse-chat[jid="${opts.peer}"]`);
  const textarea = chat.locator("textarea.chat-textarea");
  await textarea.waitFor({ state: "visible" });

  step("type and send the message");
  await textarea.click();
  await textarea.pressSequentially(opts.message, { delay: 10 });
  await textarea.press("Enter");
  const texts = chat.locator(".chat-msg__text");
  await texts.filter({ hasText: opts.message }).first().waitFor({ state: "visible" });

  step("see the reply in the chat");
  const reply = `echo: ${opts.message}`;
  const replyEl = chat.locator(".chat-msg__content--them .chat-msg__text").filter({ hasText: reply }).first();
  await replyEl.waitFor({ state: "visible" });
  summary.reply_seen = (await replyEl.innerText()).trim();
  summary.messages = (await texts.allInnerTexts()).map((t) => t.trim());
  summary.textarea_empty = (await textarea.inputValue()) === "";
  summary.ok = summary.reply_seen === reply && summary.messages.includes(opts.message);
  if (!summary.ok) summary.failure = `unexpected chat content: ${JSON.stringify(summary.messages)}`;
  code = summary.ok ? 0 : 1;
} catch (err) {
  summary.failure = `${summary.steps.at(-1)}: ${err?.message ?? err}`;
  console.error(`converse.mjs: failed at "${summary.steps.at(-1)}": ${err?.stack ?? err}`);
  // What converse says about its connection, if anything (such as an authentication failure).
  summary.connection_feedback = await page
    ?.locator(".conn-feedback")
    .allInnerTexts()
    .catch(() => []);
}

// A screenshot in any case: on failure it shows where the page was.
if (page) {
  try {
    await page.screenshot({ path: opts.screenshot, fullPage: true, timeout: STEP });
    summary.screenshot = opts.screenshot;
  } catch (err) {
    summary.screenshot_error = String(err?.message ?? err);
    code = 1;
  }
}
clearTimeout(overall);
await browser?.close().catch(() => {});
server.close();
finish(code);
