// The page tests/it/js_client.rs opens in Chromium: a React app using the hook, bundled by
// build.mjs. Its server (the test) serves it, a /token that mints 3-second tokens, and
// /v1/events proxied to the relay, as an app behind a reverse proxy would.

import { createElement as h, useState } from "react";
import { createRoot } from "react-dom/client";

import { createClient } from "../../dist/index.js";
import { OutboxProvider, useOutboxEvent } from "../../dist/react.js";

const state = (window.outboxTest = { opens: 0, errors: [], tokens: 0 });

// `?stream=URL`: the relay itself, on another origin (its `[sse] allowed_origins`);
// `?share`: one connection for all tabs; `?transport=eventsource`: the browser's EventSource.
const params = new URLSearchParams(location.search);
const client = createClient({
  url: params.get("stream") ?? "/v1/events",
  shareAcrossTabs: params.has("share"),
  transport: params.get("transport") ?? "auto",
  getToken: async () => {
    state.tokens++;
    return (await fetch("/token", { cache: "no-store" })).text();
  },
  types: ["BROWSER.*"],
  onOpen: () => state.opens++,
  onError: (e) => state.errors.push(e.kind),
  minDelayMs: 100,
  maxDelayMs: 1000,
});

function Events() {
  const [ids, setIds] = useState([]);
  useOutboxEvent("BROWSER.*", (event) => setIds((prev) => [...prev, event.id]));
  return h(
    "section",
    null,
    h("p", { "data-testid": "count" }, String(ids.length)),
    h("ol", { "data-testid": "events" }, ids.map((id) => h("li", { key: id }, id))),
  );
}

Object.defineProperty(state, "leader", { get: () => client.leader, enumerable: true });

createRoot(document.getElementById("root")).render(h(OutboxProvider, { client }, h(Events)));
