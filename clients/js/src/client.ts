/**
 * One connection shared by every listener of a page (and, with `shareAcrossTabs`, by every
 * tab of the origin): `createClient` opens the stream when
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

export interface ClientOptions extends Omit<SubscribeOptions, "onEvent"> {
  /** One connection for all of this origin's tabs showing the same stream: one tab (the
   *  holder of a Web Lock) subscribes and hands every event to the others over a
   *  BroadcastChannel; when it closes, another tab takes over from the last event id the
   *  tabs saw. Ignored where `navigator.locks` or `BroadcastChannel` are missing. */
  shareAcrossTabs?: boolean;
}

export interface OutboxClient {
  /** Calls `callback` with every event whose type matches `types`; returns the unsubscribe. */
  on(types: string | string[], callback: (event: OutboxEvent) => void): () => void;
  /** The last event id received, to resume from elsewhere. */
  readonly lastEventId: string | undefined;
  /** Whether this tab holds the connection (always, without `shareAcrossTabs`). */
  readonly leader: boolean;
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

/** What one tab tells the others over the BroadcastChannel. */
interface TabMessage {
  event: OutboxEvent;
  id: string;
}

export function createClient(options: ClientOptions): OutboxClient {
  const listeners = new Set<{ matches: (t: string) => boolean; callback: (e: OutboxEvent) => void }>();
  let sub: Subscription | undefined;
  let closed = false;
  let lastEventId = options.lastEventId;
  let leader = false;
  let channel: BroadcastChannel | undefined;
  let releaseLock: (() => void) | undefined;

  const dispatch = (event: OutboxEvent) => {
    for (const l of [...listeners]) {
      if (!l.matches(event.type)) continue;
      try {
        l.callback(event);
      } catch (e) {
        options.onError?.(new SubscriptionError("handler", `a listener threw: ${String(e)}`, true));
      }
    }
  };

  /** Subscribes from the last event id this tab saw (its own or another tab's). */
  const lead = () => {
    leader = true;
    sub = subscribe({
      ...options,
      lastEventId,
      onEvent: (event, id) => {
        lastEventId = id;
        channel?.postMessage({ event, id } satisfies TabMessage);
        dispatch(event);
      },
    });
  };

  const start = () => {
    const locks = (globalThis.navigator as { locks?: LockManager } | undefined)?.locks;
    if (!options.shareAcrossTabs || !locks || typeof BroadcastChannel === "undefined") {
      lead();
      return;
    }
    const name = `outbox-relay ${options.url} ${(options.types ?? []).join(",")}`;
    channel = new BroadcastChannel(name);
    channel.onmessage = (m: MessageEvent<TabMessage>) => {
      if (leader || closed) return;
      lastEventId = m.data.id;
      dispatch(m.data.event);
    };
    // Granted when no other tab holds it: then this tab leads until it closes.
    void locks.request(name, () => {
      if (closed) return;
      lead();
      return new Promise<void>((resolve) => (releaseLock = resolve));
    });
  };

  return {
    on(types, callback) {
      const listener = { matches: globMatcher(types), callback };
      listeners.add(listener);
      if (!sub && !channel && !closed) start();
      return () => {
        listeners.delete(listener);
      };
    },
    get lastEventId() {
      return lastEventId;
    },
    get leader() {
      return leader;
    },
    close() {
      closed = true;
      listeners.clear();
      sub?.close();
      channel?.close();
      releaseLock?.();
    },
  };
}
