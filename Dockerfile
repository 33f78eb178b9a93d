# kasuhara-guard: multi-stage image. The tokeniser dictionary is compiled by build.rs from the
# vendored IPADIC source, exactly as `cargo build` does on a workstation: nothing is downloaded
# but crates. Base images are build arguments so a registry mirror or a locally built base can
# be substituted without editing this file.
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
RUN cargo build --release --locked --bin kasuhara-guard

FROM ${RUNTIME_IMAGE}
RUN useradd --system --uid 10001 --no-create-home kasuhara
COPY --from=build /src/target/release/kasuhara-guard /usr/local/bin/kasuhara-guard
COPY dictionaries /opt/kasuhara-guard/dictionaries
COPY examples/policy.toml /opt/kasuhara-guard/policy.toml
USER kasuhara
WORKDIR /opt/kasuhara-guard
ENV KASUHARA_ADDR=0.0.0.0:50051 \
    KASUHARA_LEXICON_DIR=/opt/kasuhara-guard/dictionaries \
    KASUHARA_LOG_FORMAT=json
EXPOSE 50051
# The binary handles SIGTERM itself (health NOT_SERVING, drain, exit 0), so it runs as PID 1
# directly, in exec form.
ENTRYPOINT ["/usr/local/bin/kasuhara-guard"]
CMD ["serve"]
