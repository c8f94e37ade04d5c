/**
 * `@outbox-relay/client`: follow an outbox-relay event stream from a browser or Node.js.
 * React bindings are in `@outbox-relay/client/react`, the Prisma publisher in
 * `@outbox-relay/client/prisma`, the stream-token minter in `@outbox-relay/client/server`.
 */

export {
  subscribe,
  tokenExpiry,
  SubscriptionError,
  type ErrorKind,
  type EventSourceConstructor,
  type EventSourceLike,
  type OutboxEvent,
  type SubscribeOptions,
  type Subscription,
} from "./subscribe.js";
export { createClient, globMatcher, type ClientOptions, type OutboxClient } from "./client.js";
export { SseParser, type Message } from "./sse.js";
