// Compiled by prisma.test.mjs (tsc) against the Prisma Client generated from the README's
// model: the transaction client is taken, the full client is a type error.
import { PrismaClient } from "./generated/client.js";
import { publishOutboxEvent } from "../../dist/prisma.js";

export async function typed(prisma: PrismaClient): Promise<string> {
  const id = await prisma.$transaction(async (tx) =>
    publishOutboxEvent(tx, { eventType: "PROJECT.UPDATED", orgId: "org_1", payload: { a: 1 } }),
  );
  // @ts-expect-error: outside $transaction the row would commit on its own
  await publishOutboxEvent(prisma, { eventType: "PROJECT.UPDATED" });
  return id;
}
