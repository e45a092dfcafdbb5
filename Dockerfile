# syntax=docker/dockerfile:1
#
# ebb's container image: one static ebb (x86_64 musl, OpenSSL and librdkafka linked in)
# on an empty base, running as the non-root user 65532 "ebb".
#
#   docker build -t ebb:0.1.0 .
#   docker run --rm ebb:0.1.0 consume --bootstrap-servers broker:9092 --sink stdout
#
# This file needs Docker/BuildKit or Podman and a registry to pull the rust base image
# from; ebb's own test suite has neither, so it does not build this file. It builds the same
# image with scripts/image (umoci + skopeo, no daemon, no base image) instead:
#   scripts/image build   # static binary + OCI layout in target/image/ebb-oci
#   scripts/image check   # reads the image back, runs its ebb with chroot against Kafka
# Keep the two in step: the cargo features and environment of the build, the files of the
# final stage, and the user, entrypoint, environment and labels.

ARG RUST_VERSION=1.95

# ---- build: a static x86_64-unknown-linux-musl ebb ------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# musl-gcc for the C parts (librdkafka through cmake, OpenSSL from openssl-src, zlib);
# perl and make for OpenSSL's Configure; g++ only because librdkafka's CMake project asks
# for a C++ compiler; file to check the result. Unpinned: Debian stable's updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools cmake perl make g++ file \
      ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl

WORKDIR /src
COPY . .

# vendored-openssl: OpenSSL built from source and linked statically (the gnu build links
# the system's). LIBZ_SYS_STATIC: zlib built from source too instead of probing the host.
# CXX: cmake would otherwise look for a x86_64-linux-musl-g++ that musl-tools lacks (the
# C++ wrapper it builds is not linked into ebb).
ENV LIBZ_SYS_STATIC=1 \
    CC_x86_64_unknown_linux_musl=musl-gcc \
    CXX_x86_64_unknown_linux_musl=g++ \
    AR_x86_64_unknown_linux_musl=ar
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl -p ebb \
        --features vendored-openssl \
 && mkdir -p /rootfs/usr/local/bin /rootfs/etc/ssl/certs /rootfs/tmp \
 && objcopy --strip-debug target/x86_64-unknown-linux-musl/release/ebb /rootfs/usr/local/bin/ebb \
 && (file /rootfs/usr/local/bin/ebb | grep -Eq 'statically linked|static-pie linked') \
 && /rootfs/usr/local/bin/ebb --version

# The rest of the filesystem: CA certificates for TLS to brokers and databases, a user and
# group 65532 "ebb" (so tools that look the user up find a name), a /tmp anyone can write.
RUN cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ca-certificates.crt \
 && printf 'root:x:0:0:root:/root:/sbin/nologin\nebb:x:65532:65532:ebb:/home/ebb:/sbin/nologin\n' \
      > /rootfs/etc/passwd \
 && printf 'root:x:0:\nebb:x:65532:\n' > /rootfs/etc/group \
 && chmod 0755 /rootfs/usr/local/bin/ebb \
 && chmod 0644 /rootfs/etc/passwd /rootfs/etc/group /rootfs/etc/ssl/certs/ca-certificates.crt \
 && chmod 1777 /rootfs/tmp

# ---- the image: no shell, no package manager, no libc -----------------------------------
FROM scratch

# Set them when building a release: --build-arg VERSION=... --build-arg REVISION=$(git rev-parse HEAD)
ARG VERSION=0.1.0
ARG REVISION=unknown
COPY --from=build /rootfs/ /

# The statically linked OpenSSL's default CA paths point into its build tree: make them the
# bundle (librdkafka, linked statically, also probes this path itself).
ENV PATH=/usr/local/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_DIR=/etc/ssl/certs

LABEL org.opencontainers.image.title="ebb" \
      org.opencontainers.image.description="Elastic micro-batch processing for Kafka: produce, consume, scale, simulate." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# /metrics, /healthz, /readyz of `ebb consume` (8000) and `ebb produce` (8001).
EXPOSE 8000/tcp 8001/tcp
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["/usr/local/bin/ebb"]
