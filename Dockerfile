# Dockerfile: the shardis image from official images, for users with registry
# access (`docker build -t shardis/shardis:local .`). It matches the offline
# image that scripts/build-images.sh makes without any registry: the release
# binary, redis-cli for healthchecks, config at /etc/shardis/proxy.toml,
# non-root (65534), port 6380. See docs/containers.md.

# Build stage: the official Rust image on the same Debian release as the
# runtime stage, so the binary links against the glibc it will run with.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin shardis \
 && strip --strip-debug target/release/shardis

# Runtime stage: Debian slim with redis-cli (the compose healthcheck uses it).
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-tools \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/shardis /usr/bin/shardis
COPY deploy/compose-proxy.toml /etc/shardis/proxy.toml
ENV RUST_LOG=info NO_COLOR=1
USER 65534:65534
EXPOSE 6380
ENTRYPOINT ["/usr/bin/shardis", "--config", "/etc/shardis/proxy.toml"]
