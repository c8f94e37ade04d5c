/**
 * Publishing from Prisma: `publishOutboxEvent(tx, {...})` inserts the outbox row through the
 * transaction client of `prisma.$transaction(async (tx) => ...)`, so the event commits or
 * rolls back with the change it announces.
 *
 * Passing the full client (`prisma`) is a type error, and a runtime error where types
 * cannot tell: outside a transaction the row would commit on its own, even if the change
 * that follows fails. What tells them apart is what Prisma takes away from a transaction
 * client (`$connect`, `$disconnect`, `$on`, `$extends`); it keeps `$transaction`.
 *
 * The payload is made JSON-safe on purpose, the same way every time: `Prisma.Decimal` (and
 * any decimal.js value) becomes its exact decimal string (`"12.50"` stays `"12.5"`: decimal.js
 * keeps no trailing zeros), `BigInt` a decimal string, `Date` an ISO 8601 string in UTC,
 * objects with `toJSON` what it returns, `undefined` object members are dropped (as
 * `JSON.stringify` does); `NaN`, `Infinity`, functions, symbols, `Map`, `Set` and binary
 * data are refused with the path of the value (JSON would silently turn them into `null`
 * or `{}`).
 */

import { randomUUID } from "node:crypto";

export type JsonPrimitive = string | number | boolean | null;
export type JsonValue = JsonPrimitive | JsonValue[] | { [key: string]: JsonValue };
/** What Prisma accepts for a `Json` column: any JSON value but a bare `null`. */
export type JsonInput = string | number | boolean | JsonValue[] | { [key: string]: JsonValue };

export interface OutboxEventInput {
  eventType: string;
  orgId?: string | null;
  entityType?: string | null;
  entityId?: string | null;
  /** Anything `toJsonSafe` takes; default `{}`. */
  payload?: unknown;
  /** Default: a new UUID. */
  id?: string;
}

/** The row as the README's `model OutboxEvent` names its fields. */
export interface OutboxEventData {
  id: string;
  orgId: string | null;
  eventType: string;
  entityType: string | null;
  entityId: string | null;
  payload: JsonInput;
}

/** A Prisma transaction client with the README's `OutboxEvent` model: `Prisma.TransactionClient`
 *  fits; the full `PrismaClient` does not (it has `$disconnect`). */
export interface OutboxTransactionClient {
  outboxEvent: { create(args: { data: OutboxEventData }): PromiseLike<unknown> };
  $connect?: never;
  $disconnect?: never;
}

/** Inserts the event in `tx`'s transaction; returns its id. */
export async function publishOutboxEvent(
  tx: OutboxTransactionClient,
  input: OutboxEventInput,
): Promise<string> {
  if (typeof (tx as { $disconnect?: unknown }).$disconnect === "function") {
    throw new TypeError(
      "publishOutboxEvent needs the transaction client: call it inside " +
        "prisma.$transaction(async (tx) => { ...; await publishOutboxEvent(tx, {...}) })",
    );
  }
  if (typeof tx?.outboxEvent?.create !== "function") {
    throw new TypeError("publishOutboxEvent: the client has no outboxEvent model (see the README's model OutboxEvent)");
  }
  const { eventType } = input;
  if (typeof eventType !== "string" || eventType === "" || /[\r\n]/.test(eventType)) {
    throw new TypeError("publishOutboxEvent: eventType must be a non-empty string without line breaks");
  }
  const payload = toJsonSafe(input.payload ?? {}, "payload");
  if (payload === null) {
    throw new TypeError("publishOutboxEvent: payload must not be null (use {} for none)");
  }
  const id = input.id ?? randomUUID();
  await tx.outboxEvent.create({
    data: {
      id,
      orgId: input.orgId ?? null,
      eventType,
      entityType: input.entityType ?? null,
      entityId: input.entityId ?? null,
      payload,
    },
  });
  return id;
}

function isDecimal(v: object): v is { toFixed(): string } {
  const d = v as { d?: unknown; e?: unknown; s?: unknown; toFixed?: unknown };
  return (
    typeof d.toFixed === "function" &&
    (Array.isArray(d.d) || d.d === null) && // null: NaN and the infinities
    typeof d.e === "number" &&
    typeof d.s === "number"
  );
}

/** `value` as JSON (see the module's doc for what converts and what is refused). */
export function toJsonSafe(value: unknown, path = "value"): JsonValue {
  switch (typeof value) {
    case "string":
    case "boolean":
      return value;
    case "number":
      if (!Number.isFinite(value)) throw new TypeError(`${path} is ${value}, which JSON cannot hold`);
      return value;
    case "bigint":
      return value.toString();
    case "undefined":
      throw new TypeError(`${path} is undefined`);
    case "function":
    case "symbol":
      throw new TypeError(`${path} is a ${typeof value}, which JSON cannot hold`);
  }
  if (value === null) return null;
  const v = value as object;
  if (v instanceof Date) {
    if (Number.isNaN(v.getTime())) throw new TypeError(`${path} is an invalid Date`);
    return v.toISOString();
  }
  if (isDecimal(v)) {
    // decimal.js: NaN and Infinity are values too.
    const s = v.toFixed();
    if (!/^-?\d+(\.\d+)?$/.test(s)) throw new TypeError(`${path} is the decimal ${s}, which JSON cannot hold`);
    return s;
  }
  if (Array.isArray(v)) return v.map((x, i) => toJsonSafe(x === undefined ? null : x, `${path}[${i}]`));
  if (v instanceof Map || v instanceof Set || ArrayBuffer.isView(v) || v instanceof ArrayBuffer) {
    throw new TypeError(`${path} is a ${v.constructor.name}: convert it to an object, array or string first`);
  }
  if (typeof (v as { toJSON?: unknown }).toJSON === "function") {
    return toJsonSafe((v as { toJSON(): unknown }).toJSON(), path);
  }
  const out: { [key: string]: JsonValue } = {};
  for (const [k, x] of Object.entries(v)) {
    if (x === undefined) continue;
    out[k] = toJsonSafe(x, `${path}.${k}`);
  }
  return out;
}
