# syntax=docker/dockerfile:1
#
# maas-authz container image: a Rust builder stage and a distroless runtime (glibc, CA
# certificates, no shell, user nonroot 65532). The Helm chart (charts/maas-authz) runs it as
# `maas-authz serve`, `maas-authz migrate` (hook Job) and `maas-authz cleanup` (CronJob).
#
#   docker build -t registry.example.com/maas/maas-authz:0.1.0 .
#   docker run --rm registry.example.com/maas/maas-authz:0.1.0 --help
#
# BuildKit is required (cache mounts). The builder is Debian bookworm, like the runtime, so the
# binary links against the same glibc. protoc is vendored (build.rs), so no system packages are
# needed. Only the `maas-authz` binary is built, with the locked dependencies.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /build
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY migrations ./migrations
COPY src ./src
# The workspace's other members (loadgen, simulator): cargo reads every member's manifest.
COPY tools ./tools
# Cargo.toml declares these targets; their sources must exist even though they are not built.
COPY benches ./benches
COPY tests ./tests
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/build/target,sharing=locked \
    cargo build --release --locked --bin maas-authz \
    && install -D -m 0755 target/release/maas-authz /out/maas-authz

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="maas-authz" \
      org.opencontainers.image.description="Envoy ext_authz server and key-management API for an LLM Models-as-a-Service gateway" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/maas-authz /usr/local/bin/maas-authz
# distroless' nonroot user, numerically so that runAsNonRoot can verify it.
USER 65532:65532
# gRPC (Check, KeyValidation, health), REST API, internal API, metrics.
EXPOSE 50051 8080 8081 9090
ENTRYPOINT ["/usr/local/bin/maas-authz"]
CMD ["serve"]
