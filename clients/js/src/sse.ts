/**
 * A parser for the `text/event-stream` format, fed with decoded text as it arrives: the
 * WHATWG rules (lines end with CRLF, LF or CR; `data` lines join with LF; `id` names the
 * message, unless it holds a NUL; comments start with `:`; a blank line dispatches a message
 * that has data; a `retry:` of digits sets the reconnection time at once, alone or not).
 */

export interface Message {
  /** The `event:` name, `message` when the message has none. */
  event: string;
  data: string;
  /** The `id:` of this message, if it had one. */
  id?: string;
}

export class SseParser {
  private buffer = "";
  private event = "";
  private data: string[] = [];
  private id: string | undefined;
  /** A CR ended the last chunk: an LF at the start of the next belongs to it. */
  private pendingCr = false;

  /**
   * `dispatch` gets each message; `onRetry` each `retry:` value (ms) as soon as it is read:
   * a relay sends it alone, in a message that has no data and is never dispatched.
   */
  constructor(
    private readonly dispatch: (m: Message) => void,
    private readonly onRetry: (ms: number) => void = () => {},
  ) {}

  push(text: string): void {
    if (this.pendingCr && text.startsWith("\n")) text = text.slice(1);
    this.pendingCr = false;
    this.buffer += text;
    let start = 0;
    for (let i = 0; i < this.buffer.length; i++) {
      const c = this.buffer[i];
      if (c !== "\n" && c !== "\r") continue;
      this.line(this.buffer.slice(start, i));
      if (c === "\r") {
        if (i + 1 === this.buffer.length) this.pendingCr = true;
        else if (this.buffer[i + 1] === "\n") i++;
      }
      start = i + 1;
    }
    this.buffer = this.buffer.slice(start);
  }

  private line(line: string): void {
    if (line === "") {
      if (this.data.length > 0) {
        this.dispatch({
          event: this.event || "message",
          data: this.data.join("\n"),
          ...(this.id !== undefined ? { id: this.id } : {}),
        });
      }
      this.event = "";
      this.data = [];
      this.id = undefined;
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    switch (field) {
      case "event":
        this.event = value;
        break;
      case "data":
        this.data.push(value);
        break;
      case "id":
        if (!value.includes("\0")) this.id = value;
        break;
      case "retry":
        if (/^\d+$/.test(value)) this.onRetry(Number(value));
        break;
    }
  }
}
