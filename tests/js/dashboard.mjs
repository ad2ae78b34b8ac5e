// The admin dashboard (GET /dashboard) in headless Chromium, run by
// tests/tests/dashboard.rs. The page is opened on one node of a cluster, the
// admin token is typed into its form, and the script waits until the page
// shows --members members, all up, one of them marked leader; it saves a
// screenshot and prints {"ready": true, ...} on stdout. It then waits for a
// line "stopped ID" on stdin (the test stopped node ID) and for the page to
// show that member down, within --down-within milliseconds; it saves a
// second screenshot and prints one JSON summary line. Exits 0 when all of
// that happened, 1 otherwise (the reason is in the summary's "failure").
//
//   node dashboard.mjs --url http://127.0.0.1:5288 --token T --members 3 \
//     --screenshot-up up.png --screenshot-down down.png
//
// Needs Chromium (Debian's chromium package: /usr/bin/chromium, or --chromium).

import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { existsSync } from "node:fs";
import { parseArgs } from "node:util";

const { values: opts } = parseArgs({
  options: {
    url: { type: "string" },
    token: { type: "string" },
    members: { type: "string", default: "3" },
    "screenshot-up": { type: "string" },
    "screenshot-down": { type: "string" },
    "down-within": { type: "string", default: "5000" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
    timeout: { type: "string", default: "60000" },
  },
});
for (const required of ["url", "token", "screenshot-up", "screenshot-down"]) {
  if (!opts[required]) {
    console.error(`dashboard.mjs: --${required} is required`);
    process.exit(2);
  }
}
const STEP = Number(opts.timeout);
const MEMBERS = Number(opts.members);
const summary = { ok: false, steps: [] };
const console_errors = [];
const step = (name) => {
  summary.steps.push(name);
  console.error(`dashboard.mjs: ${name}`);
};
let browser;

async function finish(code) {
  summary.console_errors = console_errors;
  console.log(JSON.stringify(summary));
  if (browser) await browser.close().catch(() => {});
  process.exit(code);
}

if (!existsSync(opts.chromium)) {
  summary.failure = `no Chromium at ${opts.chromium}`;
  await finish(1);
}

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

// What the page shows of the cluster's members.
async function members(page) {
  return page.$$eval("#cluster tr[data-member]", (rows) =>
    rows.map((r) => ({
      id: Number(r.getAttribute("data-member")),
      status: r.getAttribute("data-status"),
      leader: r.getAttribute("data-leader") === "true",
    })),
  );
}

try {
  step("launch chromium");
  browser = await chromium.launch({
    executablePath: opts.chromium,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    timeout: STEP,
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, locale: "en-US" });
  context.setDefaultTimeout(STEP);
  const page = await context.newPage();
  page.on("console", (msg) => {
    if (msg.type() === "error") console_errors.push(msg.text());
  });
  page.on("pageerror", (err) => console_errors.push(String(err)));

  step("open the dashboard");
  const resp = await page.goto(`${opts.url}/dashboard`);
  summary.status = resp.status();
  summary.content_type = resp.headers()["content-type"];

  step("type the token");
  await page.fill("#login-input", opts.token);
  await page.press("#login-input", "Enter");

  step("wait for the cluster");
  await page.waitForFunction(
    (n) => {
      const rows = [...document.querySelectorAll("#cluster tr[data-member]")];
      return (
        rows.length === n &&
        rows.every((r) => r.getAttribute("data-status") === "up") &&
        rows.some((r) => r.getAttribute("data-leader") === "true")
      );
    },
    MEMBERS,
    { timeout: STEP },
  );
  summary.up = await members(page);
  // Two polls of /metrics: the rates and charts have a first point.
  await page.waitForFunction(() => document.querySelectorAll("#rate-tiles canvas").length > 0);
  await page.screenshot({ path: opts["screenshot-up"], fullPage: true });
  console.log(JSON.stringify({ ready: true, members: summary.up }));

  step("wait for the test to stop a node");
  const next = await lines.next();
  const match = /^stopped (\d+)$/.exec((next.value ?? "").trim());
  if (!match) throw new Error(`expected "stopped ID" on stdin, got ${JSON.stringify(next.value)}`);
  const stopped = Number(match[1]);
  const since = Date.now();
  step(`wait for member ${stopped} to be shown down`);
  await page.waitForSelector(`#cluster tr[data-member="${stopped}"][data-status="down"]`, {
    timeout: Number(opts["down-within"]),
  });
  summary.down_after_ms = Date.now() - since;
  summary.down = await members(page);
  await page.screenshot({ path: opts["screenshot-down"], fullPage: true });
  summary.ok = true;
  await finish(0);
} catch (e) {
  summary.failure = String(e?.message ?? e);
  await finish(1);
}
