/**
 * Server side: the short-lived token a subscriber presents to the relay's stream. The relay
 * checks an HS256 JWT signed with `[sse] token_secret` (its UTF-8 bytes), with `org_id`
 * (whose events it may see), `exp`, and optionally `types` (globs narrowing them); it
 * refuses a token living longer than `sse.max_token_lifetime` (1 day by default).
 */

import { SignJWT } from "jose";

export interface MintOptions {
  /** Globs of the event types the token may see, e.g. `["PROJECT.*"]` (default: all). */
  types?: string[];
  /** Seconds, or a jose time span (`"15m"`); default 15 minutes. */
  ttl?: number | string;
  /** The relay's `sse.token_secret`; default the `SSE_TOKEN_SECRET` environment variable. */
  secret?: string;
}

export async function mintStreamToken(orgId: string, options: MintOptions = {}): Promise<string> {
  if (typeof orgId !== "string" || orgId === "") {
    throw new TypeError("mintStreamToken: orgId must be a non-empty string");
  }
  const secret =
    options.secret ?? (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env?.SSE_TOKEN_SECRET;
  if (!secret) {
    throw new Error("mintStreamToken: no secret (pass options.secret or set SSE_TOKEN_SECRET)");
  }
  if (options.types && !options.types.every((t) => typeof t === "string" && t !== "")) {
    throw new TypeError("mintStreamToken: types must be non-empty strings");
  }
  const ttl = options.ttl ?? "15m";
  const jwt = new SignJWT({ org_id: orgId, ...(options.types ? { types: options.types } : {}) })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setIssuedAt();
  jwt.setExpirationTime(typeof ttl === "number" ? Math.floor(Date.now() / 1000) + ttl : ttl);
  return jwt.sign(new TextEncoder().encode(secret));
}
