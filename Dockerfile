# tdc-milter in a container (the compose lab, integration/compose/, builds this).
#
#   docker build -t tdc-milter .
#   docker run -v ./tdc-milter.yaml:/etc/tdc-milter/tdc-milter.yaml:ro tdc-milter
#
# The settings file must set milter.listen to a non-loopback address (for example
# "inet:0.0.0.0:8895") for Postfix in another container to reach it. Needs BuildKit
# (the default builder since Docker Engine 23) for the cache mounts.

# ---- build
FROM rust:1-bookworm AS builder
WORKDIR /build
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Dependency caching: the registry and target/ are BuildKit cache mounts, so a
# rebuild after a source change recompiles only this crate. Nothing is faked (no stub
# main.rs whose stale fingerprint could leave a dummy binary behind); as the cached
# target/ is not part of the image, the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/build/target,sharing=locked \
    cargo build --release --locked \
    && install -D -m 0755 target/release/tdc-milter /out/tdc-milter

# ---- runtime
FROM debian:bookworm-slim
# ca-certificates: the system roots, to which delivery.tls.ca_file adds. Not pinned:
# bookworm's updates replace old versions in the archive.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 tdc-milter \
    && useradd --uid 10001 --gid tdc-milter --no-log-init --no-create-home \
        --home-dir /var/spool/tdc-milter --shell /usr/sbin/nologin tdc-milter \
    && install -d -o tdc-milter -g tdc-milter -m 0750 /var/spool/tdc-milter /run/tdc-milter \
    && install -d -m 0755 /etc/tdc-milter
COPY --from=builder /out/tdc-milter /usr/sbin/tdc-milter

# The tdc-milter user (uid and gid 10001), numeric so that runAsNonRoot checks see it.
USER 10001:10001
# The spool: journals wait here, fsynced, until delivered (queue.spool_dir).
VOLUME ["/var/spool/tdc-milter"]
# The milter port of the usual milter.listen (inet:0.0.0.0:8895).
EXPOSE 8895
# Healthy while the daemon answers on its control socket (control.socket).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["tdc-milter", "-c", "/etc/tdc-milter/tdc-milter.yaml", "status"]
# SIGTERM lets deliveries in progress finish (delivery.shutdown_grace, 30 s by
# default): give `docker stop` a longer timeout than Docker's 10 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tdc-milter", "-c", "/etc/tdc-milter/tdc-milter.yaml"]
CMD ["run", "--log", "stderr"]
