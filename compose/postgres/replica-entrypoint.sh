#!/usr/bin/env bash
# Entrypoint of replica1 and replica2: clone the primary on the first start, then hand over to the image.
#
# The official image can only initdb an empty data directory; a streaming replica must start from a base
# backup of the primary instead. On the first start (no PG_VERSION yet) this takes one with
# `pg_basebackup -R -X stream` (-R writes standby.signal and primary_conninfo, so the copy starts as a hot
# standby) through a physical replication slot named after the replica, so the primary keeps the WAL this
# replica has not received yet. The backup goes to a side directory and is moved into place only when
# complete: an interrupted clone is retried on the next start, never mistaken for a data directory.
# Every start then execs the image's docker-entrypoint.sh as user postgres, which finds PG_VERSION, skips
# initialization and runs the command (`postgres -c hot_standby=on`).
#
# Runs as root (the image's default user): PostgreSQL's tools run as postgres through gosu.
set -Eeuo pipefail

: "${PGDATA:?}"
: "${REPLICA_NAME:?REPLICA_NAME names the replica and its replication slot}"
: "${PRIMARY_HOST:=primary}"
: "${PRIMARY_PORT:=5432}"
: "${REPLICATION_USER:?}"
: "${REPLICATION_PASSWORD:?}"

log() { printf 'replica-entrypoint [%s]: %s\n' "$REPLICA_NAME" "$*" >&2; }

clone_primary() {
    local partial="$PGDATA.partial" waited=0 slot_exists
    # the password is part of the connection string so that -R writes it into primary_conninfo
    local conninfo="host=$PRIMARY_HOST port=$PRIMARY_PORT user=$REPLICATION_USER"
    conninfo+=" password=$REPLICATION_PASSWORD application_name=$REPLICA_NAME"

    # an empty directory may stand where PGDATA goes; a non-empty one without PG_VERSION is not ours to delete
    if [ -d "$PGDATA" ] && [ -n "$(ls -A "$PGDATA")" ]; then
        log "$PGDATA is not empty but holds no PG_VERSION: remove the volume (docker compose down -v)"
        exit 1
    fi

    until pg_isready -q -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -t 2; do
        if [ $((waited % 10)) = 0 ]; then log "waiting for the primary at $PRIMARY_HOST:$PRIMARY_PORT"; fi
        sleep 1
        waited=$((waited + 1))
    done

    # The slot outlives this replica's volume (`docker compose rm` of one replica, or a clone interrupted
    # after -C): reuse it then, since --create-slot fails on an existing slot.
    slot_exists="$(psql "$conninfo dbname=postgres" -X -tA -v ON_ERROR_STOP=1 -v slot="$REPLICA_NAME" \
        <<<"SELECT 1 FROM pg_replication_slots WHERE slot_name = :'slot'")"
    local slot_args=(--slot="$REPLICA_NAME")
    if [ -z "$slot_exists" ]; then slot_args+=(--create-slot); fi

    rm -rf "$partial"
    mkdir -p "$partial" "$(dirname "$PGDATA")"
    chown postgres:postgres "$partial" "$(dirname "$PGDATA")"
    chmod 0700 "$partial"
    log "cloning the primary into $PGDATA (slot $REPLICA_NAME${slot_exists:+, reused})"
    gosu postgres pg_basebackup --dbname="$conninfo" --pgdata="$partial" --write-recovery-conf \
        --wal-method=stream "${slot_args[@]}" --checkpoint=fast --no-password
    if [ -d "$PGDATA" ]; then rmdir "$PGDATA"; fi
    mv "$partial" "$PGDATA"
    log "clone complete"
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    clone_primary
fi

# PostgreSQL refuses a data directory that it does not own or that other users can read
chown -R postgres:postgres "$PGDATA"
chmod 0700 "$PGDATA"

exec gosu postgres docker-entrypoint.sh "$@"
