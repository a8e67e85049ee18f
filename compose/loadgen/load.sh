#!/bin/sh
# Traffic for the demo app (the `load` profile): USERS sessions in parallel, forever. Each round a session
# posts a note, then lists its notes READS_PER_WRITE times: reads right after a write are the ones
# replicarouter must keep consistent (read-your-writes), the later ones can go to any replica that has
# caught up. Each session logs in under a name of its own (POST /login/, a signed session cookie) and keeps
# its cookies in a jar of its own. The demo API is a JSON API without CSRF checks (demo/README.md).
# POSIX sh: it runs in the curlimages/curl image (busybox).
set -u

APP_URL="${APP_URL:-http://app:8000}"
USERS="${USERS:-4}"
READS_PER_WRITE="${READS_PER_WRITE:-5}"
PAUSE="${PAUSE:-0.2}"

# request ARGS...: one HTTP request with this session's cookies; a line on stderr unless it is a 2xx/3xx
request() {
    code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 -b "$jar" -c "$jar" "$@")" || code="failed"
    case "$code" in
        2??|3??) return 0 ;;
    esac
    errors=$((errors + 1))
    echo "session $n: $* -> $code" >&2
    return 1
}

session() {
    n="$1"
    jar="/tmp/cookies-$n"
    : >"$jar"
    rounds=0
    errors=0
    request --data-urlencode "name=loadgen-$n" "$APP_URL/login/"  # sets the session cookie
    while :; do
        rounds=$((rounds + 1))
        request --data-urlencode "title=note $rounds" --data-urlencode "body=from session $n" "$APP_URL/notes/"
        i=0
        while [ "$i" -lt "$READS_PER_WRITE" ]; do
            request "$APP_URL/notes/"
            i=$((i + 1))
        done
        if [ $((rounds % 100)) -eq 0 ]; then
            echo "session $n: $rounds rounds, $errors failed requests"
        fi
        sleep "$PAUSE"
    done
}

echo "waiting for $APP_URL"
# any HTTP answer will do: /healthz may say 503 while a node is down, and that is the time to send load
until curl -s -o /dev/null --max-time 2 "$APP_URL/healthz"; do
    sleep 1
done

echo "sending load: $USERS sessions, $READS_PER_WRITE reads per write, ${PAUSE}s between rounds"
s=1
while [ "$s" -le "$USERS" ]; do
    session "$s" &
    s=$((s + 1))
done
wait
