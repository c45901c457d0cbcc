# syntax=docker/dockerfile:1
# kspan container image: a static binary in an empty image (no shell, no libc).
#
#   docker build -t kspan .            # needs network access to pull debian:bookworm and rustup
#   scripts/image                      # same runtime image from a locally built binary (podman)
#
# Build stage: the project's own pinned set-up (scripts/setup installs LLVM 22, bpf-linker,
# Rust 1.95 and the nightly that compiles the eBPF programs).
FROM debian:bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ca-certificates build-essential pkg-config \
 && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain none
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY . .
RUN scripts/setup \
 && CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target x86_64-unknown-linux-gnu -p agent \
 && cp target/x86_64-unknown-linux-gnu/release/kspan /kspan

# Runtime stage: the binary alone. Runs as root inside the container with only the
# capabilities the DaemonSet grants (deploy/kubernetes/daemonset.yaml).
FROM scratch
COPY --from=build /kspan /kspan
ENTRYPOINT ["/kspan"]
CMD ["run"]
