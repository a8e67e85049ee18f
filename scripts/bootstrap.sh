# Shared set-up for scripts/run-tests and scripts/run-demo (sourced, not run).
#
# On a bare Debian/Ubuntu machine it installs what replicarouter's local cluster needs (PostgreSQL server
# binaries, redis-server, python3-venv) with apt-get, then creates .venv and installs the package with its
# dev extras. Every step is skipped when already done, so a second run starts straight away.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REPLICAROUTER_VENV:-$ROOT/.venv}"

log() { printf '==> %s\n' "$*" >&2; }

have_pg_server() {
    if [ -n "${REPLICAROUTER_PG_BINDIR:-}" ] && [ -x "$REPLICAROUTER_PG_BINDIR/initdb" ]; then return 0; fi
    if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir 2>/dev/null)/initdb" ]; then return 0; fi
    compgen -G "/usr/lib/postgresql/*/bin/pg_basebackup" >/dev/null
}

python_ok() {
    "$1" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

find_python() {
    for candidate in "${REPLICAROUTER_PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
            log "missing system packages: $*; install them as root (apt-get install $*) and run again"
            exit 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        log "missing: $*; this is not a Debian/Ubuntu machine, install the equivalents yourself"
        log "(PostgreSQL >= 14 server binaries, redis-server, Python >= 3.11 with venv) and run again"
        exit 1
    fi
    # Debian's postgresql-common would create and start a 'main' cluster on port 5432: we need only the
    # binaries, and must not take a port that something else on this machine may use.
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
        $sudo mkdir -p /etc/postgresql-common
        echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.conf >/dev/null
    fi
    log "apt-get install $*"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_system_packages() {
    local packages=()
    have_pg_server || packages+=(postgresql)
    command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || packages+=(redis-server)
    find_python >/dev/null || packages+=(python3 python3-venv)
    if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1 && [[ ! " ${packages[*]} " =~ " postgresql " ]]; then
        packages+=(postgresql)  # creates the postgres account that runs the servers when we are root
    fi
    if [ ${#packages[@]} -gt 0 ]; then apt_install "${packages[@]}"; fi
}

# make_venv DIR: a virtual environment in DIR (kept when it exists)
make_venv() {
    local dir="$1" python
    [ -x "$dir/bin/python" ] && return 0
    python="$(find_python)" || { log "no Python >= 3.11 with venv found"; exit 1; }
    log "creating $dir with $python"
    if ! "$python" -m venv "$dir" >/dev/null 2>&1; then
        # Debian's python3 lacks ensurepip until python3-venv (python3.X-venv) is installed
        rm -rf "$dir"
        apt_install "python$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv"
        "$python" -m venv "$dir"
    fi
}

# ensure_venv [VENV [PIP REQUIREMENT...]]: a venv with replicarouter[dev] (plus the given requirements)
ensure_venv() {
    local VENV="${1:-$VENV}"
    local extra=("${@:2}")
    local stamp
    make_venv "$VENV"
    stamp="$VENV/.replicarouter-installed"
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
        log "installing replicarouter and its test tools into $VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
        "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]" "${extra[@]}"
        touch "$stamp"
    fi
}

# ensure_tools PIP-REQUIREMENT...: a separate venv (.venv-tools) for build-time tools (docs site, wheel
# build, compose validation) so they never share an environment with the package under test
ensure_tools() {
    local tools="$ROOT/.venv-tools" stamp want
    make_venv "$tools"
    want="$(printf '%s\n' "$@" | sort | tr '\n' ' ')"
    stamp="$tools/.installed"
    if [ ! -f "$stamp" ] || ! grep -qxF "$want" "$stamp"; then
        log "installing tools into $tools: $*"
        "$tools/bin/python" -m pip install -q "$@"
        echo "$want" >> "$stamp"
    fi
    TOOLS="$tools"
}

bootstrap() {
    ensure_system_packages
    ensure_venv
    cd "$ROOT"
}
