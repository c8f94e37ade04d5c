// The subscriber against a real relay: events arrive in order, tokens renewed ten times
// lose and repeat nothing, a relay restart loses nothing, a wrong token stops; each over
// fetch streaming and over the EventSource fallback (the `eventsource` npm package).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { createClient } from "../dist/index.js";
import { mintStreamToken } from "../dist/server.js";
import { db, esWith, freePort, insertEvents, record, SECRET, startRelay, waitFor } from "./helpers.mjs";

let client;
before(async () => {
  client = await db();
});
after(async () => {
  await client.end();
});

test("one client, one connection, any number of listeners, each by its globs", async () => {
  const port = await freePort();
  const relay = await startRelay(port);
  try {
    let opens = 0;
    const c = createClient({
      url: relay.stream,
      getToken: () => mintStreamToken("org_js", { secret: SECRET }),
      types: ["JS.SHARED.*"],
      onOpen: () => opens++,
    });
    const a = [];
    const b = [];
    const offA = c.on("JS.SHARED.A", (e) => a.push(e.id));
    c.on(["JS.SHARED.*"], (e) => b.push(e.id));
    await waitFor("the stream to open", () => opens > 0);
    const sentA = await insertEvents(client, 3, "JS.SHARED.A");
    const sentB = await insertEvents(client, 2, "JS.SHARED.B");
    await waitFor("5 events", () => b.length >= 5);
    offA();
    const later = await insertEvents(client, 1, "JS.SHARED.A");
    await waitFor("the 6th", () => b.length >= 6);
    c.close();
    assert.equal(opens, 1, "one connection for both listeners");
    assert.deepEqual(a, sentA, "A's listener saw its type only, until it left");
    assert.deepEqual(b, [...sentA, ...sentB, ...later]);
  } finally {
    await relay.stop();
  }
});

/** The two transports: fetch streaming, and the EventSource fallback. */
const transports = {
  fetch: {},
  eventsource: { transport: "eventsource", EventSource: esWith() },
};

for (const [name, via] of Object.entries(transports)) {
  test(`${name}: events arrive live, in order`, async () => {
    const port = await freePort();
    const relay = await startRelay(port);
    try {
      const r = record(relay.stream, `JS.LIVE.${name}`, () => mintStreamToken("org_js", { secret: SECRET }), via);
      await waitFor("the stream to open", () => r.opens() > 0);
      const sent = await insertEvents(client, 20, `JS.LIVE.${name}`);
      await waitFor("20 events", () => r.got.length >= 20);
      r.sub.close();
      await r.sub.done;
      assert.deepEqual(r.got, sent);
      assert.equal(r.sub.lastEventId !== undefined, true);
      assert.deepEqual(r.errors, []);
    } finally {
      await relay.stop();
    }
  });

  test(`${name}: tokens of 3 s renewed more than ten times, no event lost or repeated`, async () => {
    const port = await freePort();
    const relay = await startRelay(port);
    try {
      let minted = 0;
      const r = record(
        relay.stream,
        `JS.RENEW.${name}`,
        () => {
          minted++;
          return mintStreamToken("org_js", { secret: SECRET, ttl: 3 });
        },
        via,
      );
      await waitFor("the stream to open", () => r.opens() > 0);
      const sent = [];
      // Events all along, across the renewals (each ~0.6 s before a token's expiry).
      while (minted < 12) {
        sent.push(...(await insertEvents(client, 1, `JS.RENEW.${name}`)));
        await sleep(100);
      }
      await waitFor(`all ${sent.length} events`, () => r.got.length >= sent.length);
      await sleep(500); // a duplicate would arrive meanwhile
      r.sub.close();
      await r.sub.done;
      assert.ok(r.opens() >= 11, `${r.opens()} connections`);
      assert.deepEqual(r.got, sent, "every event once, in order, across the renewals");
      assert.deepEqual(r.errors.map((e) => e.kind), []);
    } finally {
      await relay.stop();
    }
  });

  test(`${name}: the relay restarted mid-stream, the events committed meanwhile arrive once, retries the relay's retry: apart`, async () => {
    const port = await freePort();
    let relay = await startRelay(port);
    const attempts = [];
    // Every attempt: the subscriber's fetches, or the EventSource's (its own reconnects too).
    const counted = (...args) => (attempts.push(Date.now()), fetch(...args));
    const r = record(
      relay.stream,
      `JS.RESTART.${name}`,
      () => mintStreamToken("org_js", { secret: SECRET }),
      via.EventSource ? { ...via, EventSource: esWith({ fetch: counted }) } : { fetch: counted },
    );
    try {
      await waitFor("the stream to open", () => r.opens() > 0);
      const first = await insertEvents(client, 5, `JS.RESTART.${name}`);
      await waitFor("the first 5", () => r.got.length >= 5);
      await relay.stop();
      const missed = await insertEvents(client, 7, `JS.RESTART.${name}`);
      await sleep(4500); // down long enough for a retry or two
      relay = await startRelay(port);
      const last = await insertEvents(client, 3, `JS.RESTART.${name}`);
      await waitFor(() => `all 15 (got ${r.got.length} in ${r.opens()} connections)`, () => r.got.length >= 15);
      await sleep(500);
      assert.deepEqual(r.got, [...first, ...missed, ...last]);
      assert.ok(r.opens() >= 2);
      assert.ok(r.errors.every((e) => e.kind === "connection" && e.retrying));
      // The relay says `retry: 2000` (minDelayMs here is 100): no attempt came sooner.
      const gaps = attempts.slice(1).map((t, i) => t - attempts[i]);
      assert.ok(gaps.length >= 1 && gaps.every((g) => g >= 1990), `gaps between attempts: ${gaps} ms`);
    } finally {
      r.sub.close();
      await r.sub.done;
      await relay.stop();
    }
  });

  test(`${name}: a wrong token surfaces through onError, once, and the subscription stops`, async () => {
    const port = await freePort();
    const relay = await startRelay(port);
    try {
      let asked = 0;
      const r = record(
        relay.stream,
        `JS.WRONG.${name}`,
        () => {
          asked++;
          return mintStreamToken("org_js", { secret: "not the relay's secret" });
        },
        via,
      );
      await r.sub.done; // it stops by itself
      assert.equal(asked, 2, "a 401 asks for a new token once, then stops");
      assert.equal(r.errors.length, 1);
      assert.equal(r.errors[0].kind, "unauthorized");
      assert.equal(r.errors[0].retrying, false);
      assert.equal(r.errors[0].status, 401);
      assert.equal(r.opens(), 0);
    } finally {
      await relay.stop();
    }
  });

  test(`${name}: a resume point older than the relay's retention surfaces cursor_expired, and the stream goes on`, async () => {
    const port = await freePort();
    const relay = await startRelay(port, [`retention = "2s"`]);
    try {
      const getToken = () => mintStreamToken("org_js", { secret: SECRET });
      const first = record(relay.stream, `JS.EXPIRED.${name}`, getToken, via);
      await waitFor("the stream to open", () => first.opens() > 0);
      const before = await insertEvents(client, 2, `JS.EXPIRED.${name}`);
      await waitFor("2 events", () => first.got.length >= 2);
      first.sub.close();
      await first.sub.done;
      await sleep(4500); // the cursor (stamped in whole seconds) is now older than the retention
      const later = await insertEvents(client, 1, `JS.EXPIRED.${name}`);
      const second = record(relay.stream, `JS.EXPIRED.${name}`, getToken, { ...via, lastEventId: first.sub.lastEventId });
      await waitFor("the later event", () => second.got.includes(later[0]));
      second.sub.close();
      await second.sub.done;
      assert.deepEqual(second.errors.map((e) => [e.kind, e.retrying]), [["cursor_expired", true]]);
      // From the oldest event kept: retention may have purged the earlier ones meanwhile
      // (the relay has no sink, so it completes events at once), never the later one.
      const all = [...before, ...later];
      assert.deepEqual(second.got, all.slice(all.length - second.got.length));
    } finally {
      await relay.stop();
    }
  });
}
