# syntax=docker/dockerfile:1
# Build: docker build -t outbox-relay .
# Run:   docker run -e DATABASE_URL=postgres://... -v ./config.toml:/etc/outbox-relay/config.toml outbox-relay
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY sql ./sql
RUN cargo build --release --locked --bin outbox-relay

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --uid 10001 outbox
COPY --from=build /src/target/release/outbox-relay /usr/local/bin/outbox-relay
COPY systemd/config.toml /etc/outbox-relay/config.toml
USER 10001
ENV OUTBOX_RELAY_CONFIG=/etc/outbox-relay/config.toml \
    OUTBOX_RELAY_LOG_FORMAT=json
EXPOSE 9470
ENTRYPOINT ["/usr/local/bin/outbox-relay"]
CMD ["run"]
