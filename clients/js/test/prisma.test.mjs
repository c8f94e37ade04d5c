// The Prisma publisher with a real Prisma Client (7.x, generated here from the README's
// `model OutboxEvent`, on the pg driver adapter) and the relay streaming what it wrote.
//
// `prisma generate` needs no engine in Prisma 7, but its CLI fetches the schema engine
// (used by migrate, not by generate) from binaries.prisma.sh first; with
// PRISMA_SCHEMA_ENGINE_BINARY set it skips that, so this runs offline. The table is the
// one `prisma migrate` makes for the model (tests/it/common/orm.rs), adopted by `migrate`.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { subscribe } from "../dist/index.js";
import { publishOutboxEvent, toJsonSafe } from "../dist/prisma.js";
import { mintStreamToken } from "../dist/server.js";
import { DATABASE_URL, db, freePort, SECRET, startRelay, waitFor } from "./helpers.mjs";

const here = join(dirname(fileURLToPath(import.meta.url)), "prisma");
const pkg = join(here, "..", "..");

/** The README's ```prisma block. */
function readmeModel() {
  const readme = readFileSync(join(pkg, "..", "..", "README.md"), "utf8");
  const block = readme.split("```prisma\n")[1]?.split("```")[0];
  assert.ok(block?.includes("model OutboxEvent"), "the README has a ```prisma block with the model");
  return block;
}

let prisma;
let Prisma;
let pgClient;
let relay;

before(async () => {
  writeFileSync(
    join(here, "schema.prisma"),
    `generator client {
  provider            = "prisma-client"
  output              = "./generated"
  moduleFormat        = "esm"
  importFileExtension = "js"
}

datasource db {
  provider = "postgresql"
}

${readmeModel()}`,
  );
  const bin = (name) => join(pkg, "node_modules", ".bin", name);
  execFileSync(bin("prisma"), ["generate", "--schema", join(here, "schema.prisma")], {
    cwd: here,
    env: { ...process.env, PRISMA_SCHEMA_ENGINE_BINARY: "/bin/false", PRISMA_HIDE_UPDATE_MESSAGE: "1" },
    stdio: "pipe",
  });
  // Type checks (typecheck.ts) and compiles the generated client.
  execFileSync(bin("tsc"), ["-p", join(here, "tsconfig.json")], { stdio: "pipe" });
  const gen = await import(join(here, "out", "generated", "client.js"));
  const { PrismaPg } = await import("@prisma/adapter-pg");
  Prisma = gen.Prisma;
  prisma = new gen.PrismaClient({ adapter: new PrismaPg({ connectionString: DATABASE_URL }) });
  pgClient = await db();
  relay = await startRelay(await freePort());
});

after(async () => {
  await prisma?.$disconnect();
  await pgClient?.end();
  await relay?.stop();
});

test("a committed transaction publishes, payload made JSON-safe as documented", async () => {
  const got = [];
  let opened = false;
  const sub = subscribe({
    url: relay.stream,
    getToken: () => mintStreamToken("org_prisma", { secret: SECRET }),
    types: ["PRISMA.*"],
    onEvent: (e) => got.push(e),
    onOpen: () => (opened = true),
  });
  await waitFor("the stream", () => opened);
  const id = await prisma.$transaction(async (tx) =>
    publishOutboxEvent(tx, {
      orgId: "org_prisma",
      eventType: "PRISMA.ORDER",
      entityType: "Order",
      entityId: "o_1",
      payload: {
        total: new Prisma.Decimal("12.50"),
        tiny: new Prisma.Decimal("0.000000001"),
        big: 2n ** 70n,
        at: new Date("2026-12-06T10:00:00.123Z"),
        lines: [1, undefined],
        note: undefined,
      },
    }),
  );
  const want = {
    total: "12.5",
    tiny: "0.000000001",
    big: "1180591620717411303424",
    at: "2026-12-06T10:00:00.123Z",
    lines: [1, null],
  };
  const { rows } = await pgClient.query(`SELECT payload, event_type FROM "OutboxEvent" WHERE id = $1`, [id]);
  assert.deepEqual(rows[0].payload, want, "the row");
  await waitFor("the event on the stream", () => got.length > 0);
  sub.close();
  await sub.done;
  assert.equal(got[0].id, id);
  assert.deepEqual(got[0].data, want, "the stream");
  assert.equal(got[0].entity_id, "o_1");
});

test("a rolled-back transaction publishes nothing", async () => {
  let id;
  await assert.rejects(
    prisma.$transaction(async (tx) => {
      id = await publishOutboxEvent(tx, { orgId: "org_prisma", eventType: "PRISMA.ROLLED" });
      throw new Error("the change failed");
    }),
    /the change failed/,
  );
  assert.ok(id);
  const { rows } = await pgClient.query(`SELECT count(*)::int AS n FROM "OutboxEvent" WHERE id = $1 OR event_type = 'PRISMA.ROLLED'`, [id]);
  assert.equal(rows[0].n, 0);
});

test("the full client is refused at run time too", async () => {
  await assert.rejects(
    publishOutboxEvent(prisma, { eventType: "PRISMA.OUTSIDE" }),
    /needs the transaction client/,
  );
  const { rows } = await pgClient.query(`SELECT count(*)::int AS n FROM "OutboxEvent" WHERE event_type = 'PRISMA.OUTSIDE'`);
  assert.equal(rows[0].n, 0);
});

test("values JSON cannot hold are refused with their path", () => {
  assert.throws(() => toJsonSafe({ a: { b: [NaN] } }, "payload"), /payload\.a\.b\[0\] is NaN/);
  assert.throws(() => toJsonSafe({ m: new Map() }, "payload"), /payload\.m is a Map/);
  assert.throws(() => toJsonSafe({ d: new Prisma.Decimal(Infinity) }, "payload"), /payload\.d is the decimal Infinity/);
  assert.throws(() => toJsonSafe({ f() {} }, "payload"), /payload\.f is a function/);
  assert.throws(() => toJsonSafe(new Date("nope"), "payload"), /invalid Date/);
});
