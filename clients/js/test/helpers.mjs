// Test harness: a real relay binary on a real PostgreSQL database, both given by
// tests/it/js_client.rs (OUTBOX_RELAY_BIN, DATABASE_URL: a database where the README's
// Prisma table was made and `migrate` adopted it, with SSE on; SSE_TOKEN_SECRET).

import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

import { EventSource } from "eventsource";
import pg from "pg";

import { subscribe } from "../dist/index.js";

export const BIN = need("OUTBOX_RELAY_BIN");
export const DATABASE_URL = need("DATABASE_URL");
export const SECRET = need("SSE_TOKEN_SECRET");

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run these tests through tests/it/js_client.rs`);
  return v;
}

export async function freePort() {
  const srv = createServer();
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return port;
}

/** Waits for `cond()` (up to `ms`), polling; `what` may be a function, to say at the time
 * out how far it got. */
export async function waitFor(what, cond, ms = 60_000) {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) {
      throw new Error(`timed out waiting for: ${typeof what === "function" ? what() : what}`);
    }
    await sleep(50);
  }
}

/** A relay process serving its stream on `port`; `extra`: more top-level config lines. */
export async function startRelay(port, extra = []) {
  const dir = mkdtempSync(join(tmpdir(), "relay-js-"));
  const config = join(dir, "relay.toml");
  writeFileSync(
    config,
    [
      `database_url = ${JSON.stringify(DATABASE_URL)}`,
      `poll_interval = "1s"`,
      ...extra,
      `[sse]`,
      `token_secret = ${JSON.stringify(SECRET)}`,
      `heartbeat = "1s"`,
      `[http]`,
      `listen = "127.0.0.1:${port}"`,
      "",
    ].join("\n"),
  );
  const child = spawn(BIN, ["run", "--config", config], {
    stdio: ["ignore", "ignore", "pipe"],
    env: { PATH: process.env.PATH, RUST_LOG: "warn" },
  });
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const exited = new Promise((r) => child.on("exit", r));
  const base = `http://127.0.0.1:${port}`;
  await waitFor(`the relay on ${port} to be ready`, async () => {
    if (child.exitCode !== null) throw new Error(`the relay exited:\n${stderr}`);
    try {
      return (await fetch(`${base}/readyz`)).status === 200;
    } catch {
      return false;
    }
  });
  return {
    base,
    stream: `${base}/v1/events`,
    /** SIGTERM, and waits for the exit. */
    async stop() {
      child.kill("SIGTERM");
      await exited;
    },
    stderr: () => stderr,
  };
}

export async function db() {
  const client = new pg.Client({ connectionString: DATABASE_URL });
  await client.connect();
  return client;
}

let seq = 0;

/** Inserts `n` events of `type` for `org`, one transaction each; returns their ids. */
export async function insertEvents(client, n, type, org = "org_js") {
  const ids = [];
  for (let i = 0; i < n; i++) {
    const { rows } = await client.query(
      `INSERT INTO "OutboxEvent" (id, org_id, event_type, payload, created_at)
       VALUES (gen_random_uuid(), $1, $2, $3::jsonb, now() AT TIME ZONE 'UTC') RETURNING id`,
      [org, type, JSON.stringify({ n: seq++ })],
    );
    ids.push(rows[0].id);
  }
  return ids;
}

/** The `eventsource` package's EventSource made with `init` (its own `fetch`, say); each
 * address it opens goes into `urls`. */
export function esWith(init, urls = []) {
  return class extends EventSource {
    constructor(url) {
      urls.push(url);
      super(url, init);
    }
  };
}

/** A subscription recording what it gets; `types` (a glob or several) narrows it to the
 * test's events; `extra`: more options (a transport, a fetch). */
export function record(stream, types, getToken, extra = {}) {
  const got = [];
  const errors = [];
  let opens = 0;
  const sub = subscribe({
    url: stream,
    getToken,
    types: [types].flat(),
    onEvent: (e) => got.push(e.id),
    onError: (e) => errors.push(e),
    onOpen: () => opens++,
    minDelayMs: 100,
    maxDelayMs: 1000,
    ...extra,
  });
  return { sub, got, errors, opens: () => opens };
}
