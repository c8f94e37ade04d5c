/**
 * React bindings: `<OutboxProvider client={...}>` holds the page's one connection
 * (`createClient`), and `useOutboxEvent(types, callback)` listens on it while the component
 * is mounted. The callback may change on every render without reconnecting or
 * re-registering: the latest one is called.
 */

import { createContext, createElement, useContext, useEffect, useRef, type ReactNode } from "react";

import type { OutboxClient } from "./client.js";
import type { OutboxEvent } from "./subscribe.js";

const ClientContext = createContext<OutboxClient | null>(null);

export function OutboxProvider(props: { client: OutboxClient; children?: ReactNode }) {
  return createElement(ClientContext.Provider, { value: props.client }, props.children);
}

/** Calls `callback` with every event whose type matches `types` (globs, e.g. `PROJECT.*`). */
export function useOutboxEvent<T = unknown>(
  types: string | string[],
  callback: (event: OutboxEvent<T>) => void,
): void {
  const client = useContext(ClientContext);
  if (!client) throw new Error("useOutboxEvent must be used inside <OutboxProvider client={...}>");
  const latest = useRef(callback);
  latest.current = callback;
  const key = Array.isArray(types) ? types.join("\n") : types;
  useEffect(
    () => client.on(key.split("\n"), (e) => latest.current(e as OutboxEvent<T>)),
    [client, key],
  );
}

/** The `useMessageBus(type, callback)` shape apps already use, on the relay's stream. */
export const useMessageBus = useOutboxEvent;
