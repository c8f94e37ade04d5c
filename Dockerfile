# syntax=docker/dockerfile:1
# Build: docker build -t outbox-relay .
# Run:   docker run -p 9470:9470 -e DATABASE_URL=postgres://... outbox-relay
# The image's config (deploy/container.toml) serves HTTP on 0.0.0.0:9470; to use your own,
# mount it at /etc/outbox-relay/config.toml with `[http] listen = "0.0.0.0:9470"`.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY sql ./sql
# Cargo.toml declares the benchmark target: cargo refuses the manifest without its file.
COPY benches ./benches
RUN cargo build --release --locked --bin outbox-relay

FROM debian:bookworm-slim
# DL3008 (pin apt versions): not pinned on purpose, so a rebuild picks up bookworm's
# security updates; pinned versions vanish from the archive when those land.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --uid 10001 outbox
COPY --from=build /src/target/release/outbox-relay /usr/local/bin/outbox-relay
COPY deploy/container.toml /etc/outbox-relay/config.toml
USER 10001
ENV OUTBOX_RELAY_CONFIG=/etc/outbox-relay/config.toml \
    OUTBOX_RELAY_LOG_FORMAT=json
EXPOSE 9470
# Liveness only: /healthz answers while the process runs, even with the database down
# (/readyz is for load balancers and orchestrators that should wait for the database).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9470/healthz"]
ENTRYPOINT ["/usr/local/bin/outbox-relay"]
CMD ["run"]
