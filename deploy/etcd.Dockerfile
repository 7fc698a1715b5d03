# An etcd member from Debian's etcd-server package (etcd 3.4 on bookworm). Build with the
# deploy/ directory as the context:
#
#   docker build -f deploy/etcd.Dockerfile -t nerve-synapse/etcd:dev deploy
#
# Configure it with etcd's own ETCD_* environment variables or flags (docs/deployment.md
# has a static three-member cluster); the data directory is the volume /var/lib/etcd.

ARG ETCD_BASE_IMAGE=debian:bookworm-slim
FROM ${ETCD_BASE_IMAGE}
COPY image/install-packages image/http-probe /usr/local/bin/
# The package's postinst creates the etcd system user with whatever uid is free; give it
# a fixed one (10004) so that a host directory mounted as the data volume can be owned
# by it.
RUN install-packages ca-certificates tini etcd-server && \
    rm -f /etc/init.d/etcd /etc/default/etcd && \
    groupmod -g 10004 etcd && usermod -u 10004 -g 10004 etcd && \
    install -d -o etcd -g etcd -m 0700 /var/lib/etcd
USER etcd
ENV ETCD_DATA_DIR=/var/lib/etcd \
    ETCD_LISTEN_CLIENT_URLS=http://0.0.0.0:2379 \
    ETCD_LISTEN_PEER_URLS=http://0.0.0.0:2380
VOLUME ["/var/lib/etcd"]
EXPOSE 2379 2380
# /health answers 200 only while this member sees a leader (quorum) and has no alarm.
HEALTHCHECK --interval=5s --timeout=5s --start-period=20s --retries=3 \
  CMD ["http-probe", "2379", "/health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/bin/etcd"]
