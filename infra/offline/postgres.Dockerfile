# The offline stand-in for the official `postgres` image (infra/compose.offline.yml): Debian's
# PostgreSQL on the local base image, for machines that can reach Debian's packages but no
# container registry. It honours what the compose file uses of the official image:
# POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, /docker-entrypoint-initdb.d/*.sql on first
# start, data in /var/lib/postgresql/data, `pg_isready` for the healthcheck.
ARG BASE_IMAGE=vae-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /var/lib/postgresql/data /docker-entrypoint-initdb.d \
    && chown -R postgres:postgres /var/lib/postgresql
COPY infra/offline/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
ENTRYPOINT ["/bin/sh", "/usr/local/bin/postgres-entrypoint.sh"]
