// What only the subscriber's EventSource transport (for runtimes that cannot stream a fetch
// body) does, against a real relay, with the `eventsource` npm package as the EventSource:
// the address it opens (token, unnamed messages, globs), and a refusal without a fetch to
// ask why. Live events, renewals, a restart and a wrong token are in subscribe.test.mjs,
// for both transports.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { mintStreamToken } from "../dist/server.js";
import { db, esWith, freePort, insertEvents, record, SECRET, startRelay, waitFor } from "./helpers.mjs";

let client;
before(async () => {
  client = await db();
});
after(async () => {
  await client.end();
});

const token = () => mintStreamToken("org_js", { secret: SECRET });

test("EventSource: every type a glob matches arrives, in order, the token in the query string", async () => {
  const port = await freePort();
  const relay = await startRelay(port);
  try {
    const urls = [];
    const r = record(relay.stream, "JS.ES.*", token, { transport: "eventsource", EventSource: esWith({}, urls) });
    await waitFor("the stream to open", () => r.opens() > 0);
    const sent = [];
    for (let i = 0; i < 5; i++) {
      sent.push(...(await insertEvents(client, 1, "JS.ES.A")));
      await insertEvents(client, 1, "JS.NOT.THIS");
      sent.push(...(await insertEvents(client, 1, "JS.ES.B")));
    }
    await waitFor("10 events", () => r.got.length >= 10);
    await sleep(300);
    r.sub.close();
    await r.sub.done;
    assert.deepEqual(r.got, sent);
    assert.equal(r.sub.lastEventId !== undefined, true);
    assert.deepEqual(r.errors, []);
    const url = new URL(urls[0]);
    assert.equal(url.searchParams.get("unnamed"), "true");
    assert.equal(url.searchParams.get("types"), "JS.ES.*");
    assert.ok(url.searchParams.get("access_token"));
  } finally {
    await relay.stop();
  }
});

test("EventSource without fetch: a refusal it cannot explain is retried once with a new token, then final", async () => {
  const port = await freePort();
  const relay = await startRelay(port);
  const realFetch = globalThis.fetch;
  let r;
  let asked = 0;
  try {
    // A runtime with an EventSource (this one fetches for itself) and no global fetch.
    delete globalThis.fetch;
    r = record(
      relay.stream,
      "JS.ES.NOFETCH",
      () => {
        asked++;
        return mintStreamToken("org_js", { secret: "not the relay's secret" });
      },
      { transport: "eventsource", EventSource: esWith({ fetch: realFetch }) },
    );
  } finally {
    globalThis.fetch = realFetch;
  }
  try {
    await r.sub.done;
    assert.equal(asked, 2);
    assert.deepEqual(r.errors.map((e) => [e.kind, e.retrying]), [["refused", false]]);
    assert.match(r.errors[0].message, /EventSource does not say why/);
  } finally {
    await relay.stop();
  }
});
