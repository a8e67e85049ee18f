#!/usr/bin/env bash
# First start of the primary only (the image runs /docker-entrypoint-initdb.d/* on an empty data directory,
# against a socket-only server that it restarts afterwards, so the settings below take effect at once).
#
# Written to work both executed and sourced (the image sources a script without the executable bit): no
# `exit`, no `set`, and the image's own `set -Eeo pipefail` stops the start on any error.

# Streaming replication. wal_level=replica, max_wal_senders and hot_standby are PostgreSQL 15's defaults,
# spelled out because the replicas depend on them. pg_basebackup copies this file to each replica, so the
# settings a hot standby must match (max_connections, max_wal_senders, ...) stay equal on every node.
cat >> "$PGDATA/postgresql.conf" <<'CONF'

# --- replicarouter demo (compose/postgres/primary-init/10-replication.sh) ---
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
# lets pg_rewind turn an old primary into a replica of a promoted one
wal_log_hints = on
# replicas re-follow quickly after a restart of the node they stream from
wal_retrieve_retry_interval = 200ms
# fewer replica queries cancelled by vacuum on the primary
hot_standby_feedback = on
CONF

# Replicas connect as $REPLICATION_USER: "all" in pg_hba.conf's database column does not match replication
# connections, hence a line of its own (the image has already added `host all all all scram-sha-256`).
printf 'host replication %s all scram-sha-256\n' "$REPLICATION_USER" >> "$PGDATA/pg_hba.conf"

psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password --username "$POSTGRES_USER" --dbname postgres \
    --set repl_user="$REPLICATION_USER" --set repl_password="$REPLICATION_PASSWORD" \
    --set app_user="$APP_USER" --set app_password="$APP_PASSWORD" --set app_db="$APP_DB" <<'SQL'
CREATE ROLE :"repl_user" WITH LOGIN REPLICATION PASSWORD :'repl_password';
CREATE ROLE :"app_user" WITH LOGIN PASSWORD :'app_password';
CREATE DATABASE :"app_db" OWNER :"app_user";
SQL
