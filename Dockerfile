# kasuhara-guard: multi-stage image. The tokeniser dictionary is compiled by build.rs from the
# vendored IPADIC source, exactly as `cargo build` does on a workstation: nothing is downloaded
# but crates. Base images are build arguments so a registry mirror or a locally built base can
# be substituted without editing this file (scripts/container.sh builds both locally).
ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs rustfmt.toml ./
COPY vendor ./vendor
COPY proto ./proto
COPY src ./src
COPY benches ./benches
COPY tests ./tests
# The cache mounts keep downloaded crates and compiled dependencies between builds on one
# machine; the binary is copied out because the target directory is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin kasuhara-guard \
    && cp target/release/kasuhara-guard /usr/local/bin/kasuhara-guard

FROM ${RUNTIME_IMAGE}
RUN useradd --no-log-init --uid 10001 --no-create-home --shell /usr/sbin/nologin kasuhara
COPY --from=build /usr/local/bin/kasuhara-guard /usr/local/bin/kasuhara-guard
COPY dictionaries /opt/kasuhara-guard/dictionaries
USER 10001
WORKDIR /opt/kasuhara-guard
# Listen on every interface inside the container; the orchestrator decides what reaches it.
# Mount a config file and set KASUHARA_CONFIG to change anything else (flags and KASUHARA_*
# variables still override it). That file must name a tokens file ([auth] tokens_file, see
# docs/security.md): off loopback the server refuses to start without authentication.
ENV KASUHARA_ADDR=0.0.0.0:50051 \
    KASUHARA_METRICS_ADDR=0.0.0.0:9464 \
    KASUHARA_LEXICON_DIR=/opt/kasuhara-guard/dictionaries \
    KASUHARA_LOG_FORMAT=json
# gRPC (screening, alerts, health, reflection) and Prometheus /metrics.
EXPOSE 50051 9464
# A gRPC health check against the configured address (0.0.0.0 is read as 127.0.0.1).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/kasuhara-guard", "health", "--timeout", "4s"]
# The binary handles SIGTERM itself (health NOT_SERVING, drain within the grace period, exit 0),
# so it runs as PID 1 directly, in exec form.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/kasuhara-guard"]
CMD ["serve"]
