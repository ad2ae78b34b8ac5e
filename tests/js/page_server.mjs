// The local HTTP server of the browser tests: the page on "/", converse.js's
// dist under "/dist/", a few files a deployment puts next to the page
// (aliases), and 404 for anything else (recorded in `served.missing`).

import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize, sep } from "node:path";

const TYPES = {
  ".css": "text/css",
  ".js": "text/javascript",
  ".mjs": "text/javascript",
  ".json": "application/json",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".ttf": "font/ttf",
  ".woff": "font/woff",
  ".woff2": "font/woff2",
  ".wasm": "application/wasm",
  ".mp3": "audio/mpeg",
  ".ogg": "audio/ogg",
  ".map": "application/json",
};

/**
 * Serves `page(url)` on "/" and the files of `dist`; `aliases` maps other
 * paths to files of `dist`. Resolves to { origin, server, served }.
 */
export async function startPageServer({ dist, page, aliases = {} }) {
  const served = { ok: 0, missing: [] };
  const server = createServer(async (req, res) => {
    const url = new URL(req.url, "http://127.0.0.1");
    const path = decodeURIComponent(url.pathname);
    if (path === "/" || path === "/index.html") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
      res.end(page(url));
      served.ok++;
      return;
    }
    const rel = aliases[path] ?? (path.startsWith("/dist/") ? path.slice("/dist/".length) : null);
    if (rel !== null) {
      const file = normalize(join(dist, rel));
      if (file.startsWith(dist + sep)) {
        try {
          const body = await readFile(file);
          res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream" });
          res.end(body);
          served.ok++;
          return;
        } catch {
          // Not there: 404 below.
        }
      }
    }
    served.missing.push(path);
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found\n");
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  return { origin: `http://127.0.0.1:${server.address().port}`, server, served };
}
