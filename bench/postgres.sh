#!/usr/bin/env bash
# PostgreSQL for the benchmark baseline (`tally-bench postgres` and `tally-bench compare` call it).
#
#   bench/postgres.sh start DIR PORT   install if missing, initdb DIR, start on 127.0.0.1:PORT;
#                                      prints the connection string on stdout
#   bench/postgres.sh stop DIR         stop the server whose data directory is DIR
#
# Durable settings: fsync=on, synchronous_commit=on, full_page_writes=on (PostgreSQL's defaults,
# stated so that nobody benchmarks a configuration that can lose acknowledged commits). The
# memory and checkpoint settings are the usual tuning for a write-heavy server on this machine.
set -euo pipefail

command=${1:?usage: postgres.sh start DIR PORT | stop DIR}
directory=${2:?the data directory}

bin_directory() {
    local found=""
    for candidate in /usr/lib/postgresql/*/bin; do
        if [ -x "$candidate/pg_ctl" ] && [ -x "$candidate/initdb" ]; then
            found=$candidate
        fi
    done
    # Elsewhere, e.g. only a pg_ctl on the PATH (a symlink into the real bin directory).
    if [ -z "$found" ] && command -v pg_ctl >/dev/null; then
        found=$(dirname "$(readlink -f "$(command -v pg_ctl)")")
        [ -x "$found/initdb" ] || found=""
    fi
    echo "$found"
}

bin=$(bin_directory)
if [ -z "$bin" ]; then
    echo "installing PostgreSQL from the system's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2
    apt-get install -y postgresql >&2
    bin=$(bin_directory)
fi
[ -n "$bin" ] || { echo "no PostgreSQL server binaries under /usr/lib/postgresql" >&2; exit 1; }

# PostgreSQL refuses to run as root: run it as the packages' postgres user then.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

case "$command" in
start)
    port=${3:?the port}
    mkdir -p "$directory"
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$directory"
    fi
    chmod 700 "$directory"
    as_owner "$bin/initdb" --pgdata="$directory/data" --username=postgres --auth=trust \
        --encoding=UTF8 --no-locale >"$directory/initdb.log" 2>&1 \
        || { cat "$directory/initdb.log" >&2; exit 1; }
    as_owner "$bin/pg_ctl" --pgdata="$directory/data" --log="$directory/server.log" --wait \
        --timeout=60 start -o "\
 -c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$directory\
 -c fsync=on -c synchronous_commit=on -c full_page_writes=on -c wal_sync_method=fdatasync\
 -c max_connections=200 -c shared_buffers=1GB -c wal_buffers=64MB\
 -c max_wal_size=8GB -c checkpoint_timeout=30min" >&2 \
        || { cat "$directory/server.log" >&2; exit 1; }
    echo "host=127.0.0.1 port=$port user=postgres dbname=postgres"
    ;;
stop)
    if [ -f "$directory/data/postmaster.pid" ]; then
        as_owner "$bin/pg_ctl" --pgdata="$directory/data" --wait --mode=fast stop >&2
    fi
    ;;
*)
    echo "unknown command $command" >&2
    exit 2
    ;;
esac
