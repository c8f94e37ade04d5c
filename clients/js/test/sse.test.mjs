// The event-stream parser on its own: what the relay sends and the WHATWG corner cases a
// proxy or a chunked read can produce.

import assert from "node:assert/strict";
import { test } from "node:test";

import { SseParser } from "../dist/sse.js";

/** Feeds `chunks` to a parser; returns the messages and the retry values it reported. */
function parse(...chunks) {
  const messages = [];
  const retries = [];
  const p = new SseParser(
    (m) => messages.push(m),
    (ms) => retries.push(ms),
  );
  for (const c of chunks) p.push(c);
  return { messages, retries };
}

test("a retry: alone, as the relay opens every stream with, is reported at once", () => {
  const { messages, retries } = parse("retry: 2000\n\n");
  assert.deepEqual(retries, [2000]);
  assert.deepEqual(messages, []);
  assert.deepEqual(parse("retry: 2s\n\nretry: -1\n\n").retries, [], "only digits count");
});

test("messages: event name, id, data lines joined, comments skipped", () => {
  const { messages } = parse(": heartbeat\n\nevent: A.B\nid: c1\ndata: {\"x\":\ndata: 1}\n\ndata:plain\n\n");
  assert.deepEqual(messages, [
    { event: "A.B", id: "c1", data: '{"x":\n1}' },
    { event: "message", data: "plain" },
  ]);
});

test("line ends CRLF, LF or CR, split anywhere across chunks", () => {
  const text = "event: E\r\nid: 7\rdata: a\n\r\n";
  const whole = parse(text).messages;
  assert.deepEqual(whole, [{ event: "E", id: "7", data: "a" }]);
  for (let i = 1; i < text.length; i++) {
    assert.deepEqual(parse(text.slice(0, i), text.slice(i)).messages, whole, `split at ${i}`);
  }
});

test("no data, no message; an id holding NUL is ignored", () => {
  assert.deepEqual(parse("event: NOTHING\nid: 1\n\n").messages, []);
  assert.deepEqual(parse("id: a\0b\ndata: x\n\n").messages, [{ event: "message", data: "x" }]);
});
