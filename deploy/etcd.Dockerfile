# An etcd member from Debian's etcd-server package (etcd 3.4 on bookworm). Build with the
# deploy/ directory as the context:
#
#   docker build -f deploy/etcd.Dockerfile -t nerve-synapse/etcd:dev deploy
#
# Configure it with etcd's own flags or ETCD_* environment variables (docs/deployment.md
# has a static three-member cluster); the data directory is the volume /var/lib/etcd.

ARG ETCD_BASE_IMAGE=debian:bookworm-slim
FROM ${ETCD_BASE_IMAGE}
COPY image/install-packages image/http-probe /usr/local/bin/
# The package's postinst creates the etcd system user with whatever uid is free; give it
# a fixed one (10004) so that a host directory mounted as the data volume can be owned
# by it.
RUN install-packages ca-certificates tini etcd-server etcd-client && \
    rm -f /etc/init.d/etcd /etc/default/etcd && \
    groupmod -g 10004 etcd && usermod -u 10004 -g 10004 etcd && \
    install -d -o etcd -g etcd -m 0700 /var/lib/etcd
USER etcd
VOLUME ["/var/lib/etcd"]
EXPOSE 2379 2380
# /health answers 200 only while this member sees a leader (quorum) and has no alarm.
# With TLS on the client URLs, also listen for metrics in plain HTTP on loopback
# (--listen-metrics-urls http://127.0.0.1:2381) and set HEALTH_PORT=2381.
ENV HEALTH_PORT=2379
HEALTHCHECK --interval=5s --timeout=5s --start-period=20s --retries=3 \
  CMD ["sh", "-c", "exec http-probe \"$HEALTH_PORT\" /health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/bin/etcd"]
# Defaults as flags, not ETCD_* variables: etcd refuses a setting given both ways, and
# these leave every other setting free to come from either. Arguments to `docker run`
# replace them all, so pass --data-dir and the listen URLs there too.
CMD ["--data-dir", "/var/lib/etcd", \
     "--listen-client-urls", "http://0.0.0.0:2379", \
     "--listen-peer-urls", "http://0.0.0.0:2380"]
