# syntax=docker/dockerfile:1
#
# rota's images, from one build of the workspace:
#   docker build --target coordinator -t ghcr.io/rota-dev/rota-coordinator:0.1.0 .
#   docker build --target agent       -t ghcr.io/rota-dev/rota-agent:0.1.0 .
#   docker build --target rotactl --output type=local,dest=bin .   # just the rotactl binary
#
# The protobuf compiler is pure Rust (protox), so the builder needs nothing beyond the Rust
# image. The binaries link glibc dynamically, which distroless/cc provides.

ARG RUST_IMAGE=rust:1-bookworm

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
# The cache mounts keep the registry and incremental state between builds; the binaries are
# copied out because the target cache is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        -p rota-coordinator --bin rota-coordinator --bin rotactl \
        -p rota-agent --bin rota-agent \
 && mkdir -p /out \
 && cp target/release/rota-coordinator target/release/rotactl target/release/rota-agent /out/

# The coordinator: no shell, no package manager, runs as the distroless "nonroot" user (65532),
# the same uid the Deployment's securityContext asks for.
FROM gcr.io/distroless/cc-debian12:nonroot AS coordinator
COPY --from=builder /out/rota-coordinator /usr/local/bin/rota-coordinator
USER 65532:65532
EXPOSE 9443 8080
ENTRYPOINT ["/usr/local/bin/rota-coordinator"]

# The agent runs as root in a privileged pod. It never chroots and needs no host tools in the
# image: host commands run after it enters the namespaces of the host's PID 1 (setns), and host
# files are reached through /proc/1/root, so apt, dnf and systemctl are the node's own.
FROM gcr.io/distroless/cc-debian12 AS agent
COPY --from=builder /out/rota-agent /usr/local/bin/rota-agent
ENTRYPOINT ["/usr/local/bin/rota-agent"]

FROM scratch AS rotactl
COPY --from=builder /out/rotactl /rotactl
