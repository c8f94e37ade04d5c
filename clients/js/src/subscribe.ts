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

export function subscribe(options: SubscribeOptions): Subscription {
  const doFetch = options.fetch ?? globalThis.fetch.bind(globalThis);
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

  function streamUrl(): string {
    const u = new URL(options.url, globalThis.location?.href);
    if (options.types?.length) u.searchParams.set("types", options.types.join(","));
    return u.toString();
  }

  /** One connection: resolves with how it ended. */
  async function connect(t: string): Promise<"renew" | "dropped" | "closed" | Response> {
    const conn = new AbortController();
    const abort = () => conn.abort();
    stop.signal.addEventListener("abort", abort, { once: true });
    let renewTimer: ReturnType<typeof setTimeout> | undefined;
    let renewing = false;
    try {
      const headers: Record<string, string> = {
        Authorization: `Bearer ${t}`,
        Accept: "text/event-stream",
      };
      if (lastEventId !== undefined) headers["Last-Event-ID"] = lastEventId;
      const res = await doFetch(streamUrl(), {
        headers,
        signal: conn.signal,
        cache: "no-store",
      });
      const type = res.headers.get("content-type") ?? "";
      if (!res.ok || !res.body || !type.startsWith("text/event-stream")) {
        return res;
      }
      const wait = renewIn(t);
      if (wait !== undefined) {
        renewTimer = setTimeout(() => ((renewing = true), conn.abort()), wait);
      }
      options.onOpen?.();
      const parser = new SseParser(
        (m: Message) => {
          if (m.event === "cursor_expired") {
            report(
              new SubscriptionError(
                "cursor_expired",
                "the resume point was older than the relay keeps events: some were purged",
                true,
              ),
            );
            return;
          }
          if (m.id === undefined) return;
          let event: OutboxEvent;
          try {
            event = JSON.parse(m.data);
          } catch {
            return;
          }
          lastEventId = m.id;
          try {
            options.onEvent(event, m.id);
          } catch (e) {
            report(new SubscriptionError("handler", `onEvent threw: ${String(e)}`, true));
          }
        },
        (ms) => (serverRetry = ms),
      );
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(value);
      }
      if (stop.signal.aborted) return "closed";
      return renewing ? "renew" : "dropped";
    } catch (e) {
      if (stop.signal.aborted) return "closed";
      if (renewing) return "renew";
      report(new SubscriptionError("connection", `connection failed: ${String(e)}`, true));
      return "dropped";
    } finally {
      clearTimeout(renewTimer);
      stop.signal.removeEventListener("abort", abort);
    }
  }

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
