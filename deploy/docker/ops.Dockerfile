# The two small helper images of deploy/compose/compose.yaml, built from Debian 12 packages (the
# same versions deploy/local/stack.sh and the tests run natively):
#   --target pgbouncer          PgBouncer (transaction pooling) in front of PostgreSQL
#   --target prometheus-guard   nginx with ops/nginx's reload guard in front of Prometheus
# docker compose builds them itself; by hand, from the repository root:
#   docker build -f deploy/docker/ops.Dockerfile --target prometheus-guard -t pins-guard .

FROM debian:12-slim AS pgbouncer
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends pgbouncer \
    && rm -rf /var/lib/apt/lists/*
# The configuration is mounted at /etc/pgbouncer/pgbouncer.ini; the userlist is written at start
# from POSTGRES_USER/POSTGRES_PASSWORD into the container's /tmp (deploy/compose/README section).
COPY deploy/docker/pgbouncer-entrypoint.sh /usr/local/bin/pgbouncer-entrypoint
USER postgres
EXPOSE 6432
ENTRYPOINT ["/usr/local/bin/pgbouncer-entrypoint"]

FROM debian:12-slim AS prometheus-guard
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx openssl \
    && rm -rf /var/lib/apt/lists/*
COPY ops/nginx/render_guard.sh ops/nginx/prometheus_guard.conf.template /opt/guard/
COPY deploy/docker/guard-entrypoint.sh /usr/local/bin/guard-entrypoint
# nginx runs as www-data from the start (no root master): the prefix lives in /tmp.
USER www-data
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/guard-entrypoint"]
