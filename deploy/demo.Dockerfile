# A tiny demo web service for the compose stack: busybox httpd answering with the
# service's and the host's names, and 200 on /health for nerve's check. Build with the
# deploy/ directory as the context:
#
#   docker build -f deploy/demo.Dockerfile -t nerve-synapse/demo:dev deploy

ARG DEMO_BASE_IMAGE=debian:bookworm-slim
FROM ${DEMO_BASE_IMAGE}
COPY image/install-packages image/demo-entrypoint /usr/local/bin/
RUN install-packages tini busybox && \
    useradd --uid 10003 --user-group --no-log-init --home-dir /srv/www --shell /usr/sbin/nologin demo && \
    install -d -o demo -g demo -m 0755 /srv/www
USER demo
ENV DEMO_NAME=demo DEMO_PORT=8080
EXPOSE 8080
# (No wget -T: busybox 1.35's wget crashes with it; the HEALTHCHECK timeout bounds it.)
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 \
  CMD ["sh", "-c", "exec busybox wget -q -O /dev/null \"http://127.0.0.1:$DEMO_PORT/health\""]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/demo-entrypoint"]
