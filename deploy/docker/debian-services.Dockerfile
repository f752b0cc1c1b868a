# Stand-ins for the Docker Hub images of deploy/compose/compose.yaml, built from Debian 12 packages
# for hosts that cannot pull from Docker Hub (deploy/README.md "without Docker Hub";
# deploy/compose/compose.debian.yaml uses them):
#   --target postgres     PostgreSQL 15 (postgres:15): POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB
#   --target redis        Redis 7.0 (redis:7.0): the command is the redis-server command line
#   --target prometheus   Prometheus 2.42 (prom/prometheus:v2.42.0): the command is its flags
# Every one runs as a non-root user. By hand, from the repository root:
#   docker build -f deploy/docker/debian-services.Dockerfile --target postgres -t pins-postgres:debian .
# Grafana is not packaged in Debian: there is no stand-in for grafana/grafana.

# ---- PostgreSQL 15 -----------------------------------------------------------------------------
FROM debian:12-slim AS postgres
ARG DEBIAN_FRONTEND=noninteractive
# No cluster at install time (the entrypoint makes one in PGDATA) and no service started while
# the image builds (policy-rc.d).
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d \
    && mkdir -p /etc/postgresql-common/createcluster.d \
    && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/no-main.conf \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 postgresql-client-15 \
    && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
    && install -d -m 0700 -o postgres -g postgres /var/lib/postgresql/data \
    && install -d -m 2775 -o postgres -g postgres /var/run/postgresql
COPY deploy/docker/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
VOLUME ["/var/lib/postgresql/data"]
# Fast shutdown (SIGINT), like the official image: sessions are ended, data is flushed.
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]
CMD ["postgres"]

# ---- Redis 7.0 ---------------------------------------------------------------------------------
FROM debian:12-slim AS redis
ARG DEBIAN_FRONTEND=noninteractive
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d \
    && apt-get update \
    && apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
    && install -d -m 0750 -o redis -g redis /data
COPY deploy/docker/redis-entrypoint.sh /usr/local/bin/redis-entrypoint
USER redis
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/redis-entrypoint"]
CMD ["redis-server"]

# ---- Prometheus 2.42 ---------------------------------------------------------------------------
FROM debian:12-slim AS prometheus
ARG DEBIAN_FRONTEND=noninteractive
# wget: compose.yaml's healthcheck (the official image has busybox's).
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d \
    && apt-get update \
    && apt-get install -y --no-install-recommends prometheus wget \
    && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
    && install -d -m 0755 -o prometheus -g prometheus /prometheus
USER prometheus
WORKDIR /prometheus
EXPOSE 9090
VOLUME ["/prometheus"]
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
