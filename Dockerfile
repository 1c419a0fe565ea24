# Container image of prediction-batch-controller: a release build in the official Rust image, then
# only the binary on a distroless, non-root base.
#   docker build --build-arg GIT_REVISION=$(git rev-parse --short=12 HEAD) -t prediction-batch-controller .
#   docker buildx build --platform linux/amd64,linux/arm64 --build-arg GIT_REVISION=... -t REPO:TAG --push .
# Both platforms build on the build machine's own (FROM --platform=$BUILDPLATFORM): the other one is
# cross-compiled by hack/build-image-binary, never emulated. GIT_REVISION is what `--version`
# reports (the build context has no .git).
#
# Release flags: the binary is built with `cargo build --release --locked` and nothing else (plus
# `--target <triple>` when cross-compiling): no RUSTFLAGS, no CARGO_PROFILE_* overrides. So it is
# compiled with exactly the [profile.release] of Cargo.toml, the same flags as a local
# `cargo build --release` and as the binary the test suite runs (`cargo test --release`);
# tests/dockerfile.rs checks this.
#
# Runtime contract (proven by tests/chart.rs without an image: the release binary runs a batch as
# UID 65532 with no HOME, cwd / and nothing writable): the process needs no writable path, no
# shell and no root, so the chart runs it with readOnlyRootFilesystem and Pod Security "restricted".
#
# Base images are pinned: the builder by its exact Rust release (a Debian 12 image, the same glibc
# as the runtime image), the runtime image by digest. Update both together.

# RUST_IMAGE is the builder: the exact Rust release on Debian 12 (bookworm).
ARG RUST_IMAGE=rust:1.95.0-bookworm
# RUNTIME_IMAGE is the distroless "cc" image (glibc, CA certificates, no shell) as user nonroot.
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f

# builder compiles the release binary; registry and target caches survive between builds.
FROM --platform=$BUILDPLATFORM ${RUST_IMAGE} AS builder
ARG TARGETARCH
ARG BUILDARCH
ARG GIT_REVISION=unknown
WORKDIR /build
COPY Cargo.toml Cargo.lock build.rs ./
COPY hack/build-image-binary ./hack/
COPY src ./src
# Cargo.toml names bench/ and plugin/ as workspace members, so cargo cannot load the manifest
# without them; `cargo build` at the root still builds only the controller package.
COPY bench/Cargo.toml ./bench/
COPY bench/src ./bench/src
COPY plugin/Cargo.toml ./plugin/
COPY plugin/src ./plugin/src
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/build/target,sharing=locked \
    PBC_GIT_REVISION=$GIT_REVISION sh hack/build-image-binary /out/prediction-batch-controller

# runtime is the shipped image: glibc and CA certificates (distroless "cc"), no shell, UID 65532.
FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=builder /out/prediction-batch-controller /usr/local/bin/prediction-batch-controller
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/prediction-batch-controller"]
CMD ["run"]
