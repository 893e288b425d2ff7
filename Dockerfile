# The wallet worker image: `docker build -t wallet-transfer .`, or `docker compose up --build`.
#
# Builder: rdkafka-sys compiles the bundled librdkafka from source with its mklove `./configure`
# and make (no cmake). The crate enables the `libz` and `ssl` features: zlib and OpenSSL are found
# through pkg-config and linked dynamically (GSSAPI, zstd and curl are configured out). python3 lets
# librdkafka generate its linker script (optional, but it avoids a configure warning).
FROM rust:1-bookworm AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential pkg-config python3 zlib1g-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build

# Dependencies first, against placeholder sources, so this layer is reused while only src/
# changes. The crate has a library (src/lib.rs) and the `wallet` binary (src/main.rs).
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin wallet \
    && rm -rf src

COPY src ./src
# COPY keeps the context's modification times, which can be older than the placeholder build;
# touch so cargo rebuilds the crate itself.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin wallet \
    && cp target/release/wallet /usr/local/bin/wallet

FROM debian:bookworm-slim
# libz.so.1, libgcc_s and libc are already in the base image; curl is for the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 wallet \
    && useradd --system --uid 10001 --gid wallet --no-create-home --shell /usr/sbin/nologin wallet
COPY --from=builder /usr/local/bin/wallet /usr/local/bin/wallet
USER wallet:wallet
# The metrics endpoint must listen beyond loopback to be reachable from outside the container.
ENV METRICS_ADDR=0.0.0.0:9898
EXPOSE 9898
# The worker handles SIGTERM itself: it finishes in-flight transfers, flushes and commits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["wallet"]
CMD ["worker"]
