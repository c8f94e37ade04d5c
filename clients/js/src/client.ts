/**
 * One connection shared by every listener of a page: `createClient` opens the stream when
 * the first listener registers, and each listener gets the events whose type matches its
 * globs (`PROJECT.*`: `*` matches any run of characters, `?` one, as the relay's do).
 */

import {
  subscribe,
  SubscriptionError,
  type OutboxEvent,
  type SubscribeOptions,
  type Subscription,
} from "./subscribe.js";

export type ClientOptions = Omit<SubscribeOptions, "onEvent">;

export interface OutboxClient {
  /** Calls `callback` with every event whose type matches `types`; returns the unsubscribe. */
  on(types: string | string[], callback: (event: OutboxEvent) => void): () => void;
  /** The last event id received, to resume from elsewhere. */
  readonly lastEventId: string | undefined;
  /** Closes the connection; listeners get nothing more. */
  close(): void;
}

/** A matcher for relay-style globs. */
export function globMatcher(globs: string | string[]): (type: string) => boolean {
  const res = (Array.isArray(globs) ? globs : [globs]).map(
    (g) =>
      new RegExp(
        "^" +
          g
            .split("")
            .map((c) => (c === "*" ? ".*" : c === "?" ? "." : c.replace(/[.+^${}()|[\]\\]/g, "\\$&")))
            .join("") +
          "$",
        "s",
      ),
  );
  return (type) => res.some((r) => r.test(type));
}

export function createClient(options: ClientOptions): OutboxClient {
  const listeners = new Set<{ matches: (t: string) => boolean; callback: (e: OutboxEvent) => void }>();
  let sub: Subscription | undefined;
  let closed = false;
  return {
    on(types, callback) {
      const listener = { matches: globMatcher(types), callback };
      listeners.add(listener);
      if (!sub && !closed) {
        sub = subscribe({
          ...options,
          onEvent: (event) => {
            for (const l of [...listeners]) {
              if (!l.matches(event.type)) continue;
              try {
                l.callback(event);
              } catch (e) {
                options.onError?.(
                  new SubscriptionError("handler", `a listener threw: ${String(e)}`, true),
                );
              }
            }
          },
        });
      }
      return () => {
        listeners.delete(listener);
      };
    },
    get lastEventId() {
      return sub?.lastEventId;
    },
    close() {
      closed = true;
      listeners.clear();
      sub?.close();
    },
  };
}
