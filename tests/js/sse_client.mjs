// A browser-style SSE subscriber for tests/sse_external.rs, built on the `eventsource` npm
// package: a WHATWG EventSource for Node.js that nobody on this team wrote.
//
//   node sse_client.mjs <url> --count N --type T [--type T2 ...] [--marker M ...]
//
// stdout, one JSON object per line:
//   {"open": true}                           the library (re)connected
//   {"id": "...", "event": "T", "data": "..."}  a message of a --type or --marker type
// It exits 0 once it has received N messages of the --type types (--marker messages are
// printed but not counted), and 1 if the library gives up (it never reconnects after a
// non-200 answer or a wrong content type).
//
// Reconnecting, the `retry:` delay and `Last-Event-ID` are left entirely to the library:
// that is what the test is about. A browser's EventSource cannot send headers, so the
// token goes in the URL (`?access_token=`), as a web page would put it.

import { parseArgs } from "node:util";

if (typeof fetch !== "function") {
  console.error(`eventsource 3 needs fetch: Node.js 18 or later (this is ${process.version})`);
  process.exit(1);
}
const { EventSource } = await import("eventsource");

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    count: { type: "string" },
    type: { type: "string", multiple: true },
    marker: { type: "string", multiple: true, default: [] },
  },
});
const [url] = positionals;
const count = Number(values.count);
if (!url || !Number.isInteger(count) || count < 1 || !values.type) {
  console.error("usage: node sse_client.mjs <url> --count N --type T [--type T2 ...] [--marker M ...]");
  process.exit(2);
}

const print = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const es = new EventSource(url);
let counted = 0;

es.addEventListener("open", () => print({ open: true }));

es.addEventListener("error", (e) => {
  // A dropped connection is routine (the library is CONNECTING again); say why on stderr,
  // where the test shows it only if it fails.
  console.error(`eventsource error (readyState ${es.readyState}): ${e.message ?? ""} ${e.code ?? ""}`);
  if (es.readyState === EventSource.CLOSED) {
    process.exitCode = 1;
    es.close();
  }
});

// Our events are named (`event: PROJECT.UPDATED`), so `onmessage` never fires for them: a
// subscriber has to listen for each type by name, as a web page would.
for (const type of values.type) {
  es.addEventListener(type, (e) => {
    print({ id: e.lastEventId, event: e.type, data: e.data });
    if (++counted === count) {
      es.close();
      // Exit only once the last line is written: stdout may be a pipe.
      process.stdout.write("", () => process.exit(0));
    }
  });
}
for (const type of values.marker) {
  es.addEventListener(type, (e) => print({ id: e.lastEventId, event: e.type, data: e.data }));
}
