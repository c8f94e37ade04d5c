/**
 * One subscription to the relay's event stream (`GET /v1/events`), kept alive: the token
 * goes in the `Authorization` header (over `fetch` streaming), the last event id is kept and
 * sent back as `Last-Event-ID` on every reconnect, so the relay sends exactly the events
 * missed, in order, with no duplicate.
 *
 * - Reconnects after a dropped connection or a server error, with exponential backoff and
 *   jitter (from 0.5 to 1 times the step), at least the relay's `retry:` apart.
 * - Asks `getToken()` for a new token before the current one expires (it reads `exp` from
 *   the JWT, without verifying it) and reconnects with it, resuming where it was; and on a
 *   401, once: a second 401 in a row is final (`unauthorized`).
 * - Surfaces `cursor_expired` (events older than the relay's retention were purged; the
 *   stream goes on from the oldest kept) and a rejected cursor (`cursor_rejected`: it
 *   restarts live) through `onError`, and goes on.
 * - `close()` ends it; nothing is called after.
 *
 * Where the runtime cannot stream a `fetch` body (React Native, say) it falls back to an
 * `EventSource` (the global one, or `options.EventSource`): the token then goes in the query
 * string (`access_token`), every message comes unnamed (`unnamed=true`) so globs still work,
 * and the `EventSource` is replaced with a fresh token before the old one expires. An
 * `EventSource` that gives up (the relay answered something else than a stream) does not say
 * why; one plain `GET` of the same address does, where `fetch` exists at all.
 */

import { SseParser, type Message } from "./sse.js";

/** An event as the relay streams it: the webhook envelope without `attempt`. */
export interface OutboxEvent<T = unknown> {
  id: string;
  type: string;
  /** RFC 3339, when the event was created. */
  timestamp: string;
  org_id: string;
  entity_type: string | null;
  entity_id: string | null;
  /** The payload as published. */
  data: T;
}

export type ErrorKind =
  /** The token was refused twice in a row (a wrong secret, a wrong org): no more retries. */
  | "unauthorized"
  /** The relay answered something a retry will not change (403, 404, not an event stream). */
  | "refused"
  /** The cursor was older than the relay's retention: events in between were purged. */
  | "cursor_expired"
  /** The relay did not take the cursor (its `sse.token_secret` changed): restarted live. */
  | "cursor_rejected"
  /** `getToken()` threw or returned something else than a string. */
  | "token"
  /** A connection failed or dropped; it is being retried. */
  | "connection"
  /** `onEvent` threw: the event counts as received all the same. */
  | "handler";

export class SubscriptionError extends Error {
  constructor(
    readonly kind: ErrorKind,
    message: string,
    /** False when the subscription has stopped for good. */
    readonly retrying: boolean,
    readonly status?: number,
  ) {
    super(message);
    this.name = "SubscriptionError";
  }
}

export interface SubscribeOptions {
  /** The stream's address, e.g. `https://relay.example.com/v1/events`. */
  url: string;
  /** A fresh stream token (see `mintStreamToken` in `@outbox-relay/client/server`). */
  getToken: () => string | Promise<string>;
  /** Globs narrowing the stream (`?types=`); the token's own `types` still apply. */
  types?: string[];
  onEvent: (event: OutboxEvent, id: string) => void;
  onError?: (error: SubscriptionError) => void;
  /** Called each time a connection is open and streaming. */
  onOpen?: () => void;
  /** Resume after this event id (from an earlier subscription) instead of starting live. */
  lastEventId?: string;
  /** First and largest reconnection delay, ms (default 500 and 30,000). */
  minDelayMs?: number;
  maxDelayMs?: number;
  /** Renew the token this long before its `exp` (seconds, default: a fifth of its life,
   *  at most 60). */
  refreshBeforeS?: number;
  /** A `fetch` to use instead of the global one. */
  fetch?: typeof fetch;
  /** `fetch` (streaming, the token in a header), `eventsource`, or `auto` (the default):
   *  `fetch` where the runtime streams response bodies or `options.fetch` is given, else
   *  `eventsource`. */
  transport?: "auto" | "fetch" | "eventsource";
  /** An `EventSource` to use instead of the global one (a polyfill, or the `eventsource`
   *  package in Node.js). */
  EventSource?: EventSourceConstructor;
}

/** The part of the WHATWG `EventSource` this uses: the browser's, or a polyfill's. */
export interface EventSourceLike {
  readonly readyState: number;
  addEventListener(type: string, listener: (event: { data?: unknown; lastEventId?: string }) => void): void;
  close(): void;
}

export type EventSourceConstructor = new (url: string) => EventSourceLike;

/** `EventSource.CLOSED`: it will not reconnect by itself. */
const ES_CLOSED = 2;

/** Whether this runtime can stream a `fetch` response body. */
function fetchStreams(): boolean {
  return (
    typeof globalThis.fetch === "function" &&
    typeof ReadableStream === "function" &&
    typeof Response === "function" &&
    "body" in Response.prototype
  );
}

export interface Subscription {
  /** The id of the last event received: pass it as `lastEventId` to resume elsewhere. */
  readonly lastEventId: string | undefined;
  /** Ends the subscription; `done` resolves once its connection is closed. */
  close(): void;
  readonly done: Promise<void>;
}

/** Seconds since the epoch at which `token` (a JWT) expires, if it says. */
export function tokenExpiry(token: string): number | undefined {
  const part = token.split(".")[1];
  if (!part) return undefined;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const json = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
    return typeof json.exp === "number" ? json.exp : undefined;
  } catch {
    return undefined;
  }
}

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => (clearTimeout(t), resolve()), { once: true });
  });

/** Whether `res` is the stream itself (anything else is the relay refusing it). */
function isEventStream(res: Response): boolean {
  return res.ok && (res.headers.get("content-type") ?? "").startsWith("text/event-stream");
}

/** How one connection ended: a `Response` when the relay refused it (its status says why),
 *  `gave_up` when an `EventSource` stopped and nothing could tell why. */
type Outcome = "renew" | "dropped" | "closed" | "gave_up" | Response;

export function subscribe(options: SubscribeOptions): Subscription {
  const globalFetch = typeof globalThis.fetch === "function" ? globalThis.fetch.bind(globalThis) : undefined;
  const doFetch = options.fetch ?? globalFetch;
  const EventSourceImpl = options.EventSource ?? (globalThis as { EventSource?: EventSourceConstructor }).EventSource;
  const transport =
    options.transport === "fetch" || options.transport === "eventsource"
      ? options.transport
      : options.fetch || fetchStreams() || !EventSourceImpl
        ? "fetch"
        : "eventsource";
  if (transport === "fetch" && !doFetch) throw new Error("subscribe: no fetch in this runtime (pass options.fetch)");
  if (transport === "eventsource" && !EventSourceImpl) {
    throw new Error("subscribe: no EventSource in this runtime (pass options.EventSource)");
  }
  const minDelay = options.minDelayMs ?? 500;
  const maxDelay = options.maxDelayMs ?? 30_000;
  const stop = new AbortController();
  let lastEventId = options.lastEventId;
  let token: string | undefined;
  let serverRetry = 0;

  const report = (e: SubscriptionError) => {
    try {
      options.onError?.(e);
    } catch {
      // A throwing error handler must not end the subscription.
    }
  };

  /** One streamed event (`data` is the envelope's JSON). */
  function received(id: string, data: string): void {
    let event: OutboxEvent;
    try {
      event = JSON.parse(data);
    } catch {
      return;
    }
    lastEventId = id;
    try {
      options.onEvent(event, id);
    } catch (e) {
      report(new SubscriptionError("handler", `onEvent threw: ${String(e)}`, true));
    }
  }

  function cursorExpired(): void {
    report(
      new SubscriptionError(
        "cursor_expired",
        "the resume point was older than the relay keeps events: some were purged",
        true,
      ),
    );
  }

  async function freshToken(): Promise<string> {
    const t = await options.getToken();
    if (typeof t !== "string" || t === "") throw new Error("getToken() gave no token");
    return t;
  }

  /** When to renew `t`: ms from now, or undefined when it does not say when it expires. */
  function renewIn(t: string): number | undefined {
    const exp = tokenExpiry(t);
    if (exp === undefined) return undefined;
    const now = Date.now() / 1000;
    const life = Math.max(exp - now, 0);
    const before = options.refreshBeforeS ?? Math.min(60, life / 5);
    return Math.max((exp - before - now) * 1000, 0);
  }

  /** The stream's address; with `query`, more parameters (the `EventSource` transport's). */
  function streamUrl(query: Record<string, string | undefined> = {}): string {
    const u = new URL(options.url, globalThis.location?.href);
    if (options.types?.length) u.searchParams.set("types", options.types.join(","));
    for (const [k, v] of Object.entries(query)) if (v !== undefined) u.searchParams.set(k, v);
    return u.toString();
  }

  /** Runs `body` for one connection: aborted by `close()`, or by the renewal timer for `t`
   *  (then `renewing()` is true). */
  async function connection<T>(
    t: string,
    body: (signal: AbortSignal, renewing: () => boolean) => Promise<T>,
  ): Promise<T> {
    const conn = new AbortController();
    const abort = () => conn.abort();
    stop.signal.addEventListener("abort", abort, { once: true });
    let renewing = false;
    const wait = renewIn(t);
    const renewTimer = wait === undefined ? undefined : setTimeout(() => ((renewing = true), conn.abort()), wait);
    try {
      return await body(conn.signal, () => renewing);
    } finally {
      clearTimeout(renewTimer);
      stop.signal.removeEventListener("abort", abort);
    }
  }

  /** One connection over `fetch` streaming. */
  function connectFetch(t: string): Promise<Outcome> {
    return connection(t, async (signal, renewing) => {
      try {
        const headers: Record<string, string> = {
          Authorization: `Bearer ${t}`,
          Accept: "text/event-stream",
        };
        if (lastEventId !== undefined) headers["Last-Event-ID"] = lastEventId;
        const res = await doFetch!(streamUrl(), { headers, signal, cache: "no-store" });
        if (!isEventStream(res) || !res.body) return res;
        options.onOpen?.();
        const parser = new SseParser(
          (m: Message) => {
            if (m.event === "cursor_expired") cursorExpired();
            else if (m.id !== undefined) received(m.id, m.data);
          },
          (ms) => (serverRetry = ms),
        );
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          parser.push(decoder.decode(value, { stream: true }));
        }
        if (stop.signal.aborted) return "closed";
        return renewing() ? "renew" : "dropped";
      } catch (e) {
        if (stop.signal.aborted) return "closed";
        if (renewing()) return "renew";
        report(new SubscriptionError("connection", `connection failed: ${String(e)}`, true));
        return "dropped";
      }
    });
  }

  /** One `EventSource`, kept until it gives up, the token is due for renewal, or `close()`.
   *  It reconnects by itself after a drop (the relay's `retry:` apart, with `Last-Event-ID`). */
  function connectEventSource(t: string): Promise<Outcome> {
    return connection(t, async (signal, renewing) => {
      // From the last event delivered: read again when asking why it gave up.
      const url = () => streamUrl({ access_token: t, unnamed: "true", last_event_id: lastEventId });
      const es = new EventSourceImpl!(url());
      let opened = false;
      const ended = await new Promise<"closed" | "renew" | "gave_up">((resolve) => {
        signal.addEventListener("abort", () => resolve(renewing() ? "renew" : "closed"), { once: true });
        es.addEventListener("open", () => ((opened = true), options.onOpen?.()));
        es.addEventListener("message", (m) => {
          if (typeof m.data === "string" && m.lastEventId) received(m.lastEventId, m.data);
        });
        es.addEventListener("cursor_expired", () => cursorExpired());
        es.addEventListener("error", () => {
          if (es.readyState === ES_CLOSED) return resolve("gave_up");
          report(new SubscriptionError("connection", "the stream dropped; the EventSource reconnects", true));
        });
      });
      es.close();
      if (ended !== "gave_up") return ended;
      if (!doFetch) return opened ? "dropped" : "gave_up";
      // Why did it stop? The same request once more, read as a plain answer.
      try {
        const res = await doFetch(url(), { headers: { Accept: "text/event-stream" }, signal, cache: "no-store" });
        if (isEventStream(res)) {
          await res.body?.cancel();
          return "dropped";
        }
        return res;
      } catch (e) {
        if (stop.signal.aborted) return "closed";
        report(new SubscriptionError("connection", `connection failed: ${String(e)}`, true));
        return "dropped";
      }
    });
  }

  const connect = transport === "fetch" ? connectFetch : connectEventSource;

  async function run(): Promise<void> {
    let failures = 0;
    let refusedOnce = false;
    while (!stop.signal.aborted) {
      if (token === undefined || (renewIn(token) ?? 1) <= 0) {
        try {
          token = await freshToken();
        } catch (e) {
          report(new SubscriptionError("token", `getToken() failed: ${String(e)}`, true));
          token = undefined;
          await backoff(failures++);
          continue;
        }
      }
      const opened = Date.now();
      const outcome = await connect(token);
      if (outcome === "closed") return;
      if (outcome === "gave_up") {
        // An EventSource refused before it ever opened, and no fetch to ask why.
        token = undefined;
        if (refusedOnce) {
          report(
            new SubscriptionError(
              "refused",
              "the relay refused the stream twice in a row; EventSource does not say why " +
                "(a wrong token, a Last-Event-ID it did not issue, too many subscribers): see the relay's log",
              false,
            ),
          );
          return;
        }
        refusedOnce = true;
        await backoff(failures++);
        continue;
      }
      if (typeof outcome === "string") refusedOnce = false;
      if (outcome === "renew") {
        token = undefined;
        failures = 0;
        continue;
      }
      if (outcome === "dropped") {
        // A connection that streamed for a while starts the backoff over.
        if (Date.now() - opened > 10_000) failures = 0;
        await backoff(failures++);
        continue;
      }
      const res = outcome;
      const body = (await res.text().catch(() => "")).slice(0, 300);
      if (res.status === 401) {
        token = undefined;
        if (refusedOnce) {
          report(new SubscriptionError("unauthorized", `401: ${body}`, false, 401));
          return;
        }
        refusedOnce = true;
        continue;
      }
      refusedOnce = false;
      if (res.status === 400 && /Last-Event-ID/i.test(body)) {
        report(new SubscriptionError("cursor_rejected", `400: ${body}`, true, 400));
        lastEventId = undefined;
        continue;
      }
      if (res.status >= 500 || res.status === 429 || res.status === 408) {
        report(new SubscriptionError("connection", `HTTP ${res.status}: ${body}`, true, res.status));
        await backoff(failures++);
        continue;
      }
      report(
        new SubscriptionError(
          "refused",
          res.ok ? "the answer was not an event stream" : `HTTP ${res.status}: ${body}`,
          false,
          res.status,
        ),
      );
      return;
    }
  }

  function backoff(n: number): Promise<void> {
    const step = Math.min(maxDelay, minDelay * 2 ** Math.min(n, 20));
    const ms = Math.max(serverRetry, step * (0.5 + Math.random() / 2));
    return sleep(ms, stop.signal);
  }

  const done = run();
  return {
    get lastEventId() {
      return lastEventId;
    },
    close() {
      stop.abort();
    },
    done,
  };
}
