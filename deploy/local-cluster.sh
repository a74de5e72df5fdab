#!/usr/bin/env bash
# A whole reverie deployment on one machine, in one folder: redis-server, PostgreSQL, N workers
# and M front ends, each a process of its own with its log and pid file. The same processes and
# settings as on many machines (docs/deployment.md), without Docker.
#
#   deploy/local-cluster.sh start [options]    start everything, wait until it answers, print the URLs
#   deploy/local-cluster.sh stop  [--dir DIR]  stop everything started in DIR (workers and front ends
#                                              first, so running jobs go back to the queue)
#   deploy/local-cluster.sh status [--dir DIR] which processes run
#
# Options (start):
#   --dir DIR          the cluster's folder (default ./reverie-cluster): redis/, postgres/, data/
#                      (the shared picture folder), logs/, pids/
#   --workers N        `reverie worker` processes (default 2), each OMP_NUM_THREADS=1 unless set
#   --front-ends M     `reverie serve --broker` processes (default 1), on ports PORT, PORT+1, ...
#   --port PORT        the first front end's port (default 7860)
#   --redis-port P     (default 6379)            --postgres-port P   (default 5432)
#   --no-postgres      the gallery's SQLite file in data/ instead (one machine only)
#   --device DEV       the workers' device (default auto); with cuda, worker i gets cuda:i
#   --model NAME       the front ends' default model (default: reverie's own default)
#   --batch-limit N    pictures per pass the workers' compatible jobs share (default 8; 1: no batching)
#   --dry-run          print the commands, start nothing
#
# Environment: REVERIE, the command that runs reverie (default `reverie`, else `python3 -m reverie`);
# REVERIE_VISIBILITY_TIMEOUT, REVERIE_LEASE_S, REVERIE_HEARTBEAT_S pass through to every process.
# Needs redis-server and PostgreSQL's initdb/pg_ctl (Debian: apt-get install redis-server postgresql).
# As root, PostgreSQL runs as the `postgres` user (initdb refuses root).
set -euo pipefail

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }

ACTION=${1:-}
case "$ACTION" in
  start|stop|status) shift ;;
  -h|--help|help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac

DIR=./reverie-cluster WORKERS=2 FRONT_ENDS=1 PORT=7860 REDIS_PORT=6379 PG_PORT=5432
POSTGRES=1 DEVICE=auto MODEL="" BATCH_LIMIT=8 DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --front-ends) FRONT_ENDS=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --redis-port) REDIS_PORT=$2; shift 2 ;;
    --postgres-port) PG_PORT=$2; shift 2 ;;
    --no-postgres) POSTGRES=0; shift ;;
    --device) DEVICE=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --batch-limit) BATCH_LIMIT=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "local-cluster.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$DIR" && DIR=$(cd "$DIR" && pwd)

if [ -z "${REVERIE:-}" ]; then
  if command -v reverie >/dev/null; then REVERIE=reverie; else REVERIE="python3 -m reverie"; fi
fi
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$PG_BIN" ] || PG_BIN=$(dirname "$(command -v initdb || echo /usr/bin/initdb)")
BROKER="redis://127.0.0.1:$REDIS_PORT/0"
if [ "$POSTGRES" = 1 ]; then DATABASE="postgresql://reverie@127.0.0.1:$PG_PORT/reverie"; else DATABASE=""; fi

# --dry-run prints on fd 3, also for commands whose output goes to /dev/null (only then: a process
# started in the background must not hold our stdout open).
[ "$DRY" = 1 ] && exec 3>&1
run() {  # run (or, with --dry-run, print) a command
  if [ "$DRY" = 1 ]; then printf '%q ' "$@" >&3; echo >&3; else "$@"; fi
}
as_pg() {  # PostgreSQL's tools refuse root: run them as the postgres user then
  if [ "$(id -u)" = 0 ]; then run runuser -u postgres -- "$@"; else run "$@"; fi
}
background() {  # background NAME COMMAND...: start with its log and pid file
  local name=$1; shift
  if [ "$DRY" = 1 ]; then printf '%q ' "$@"; echo "> logs/$name.log &"; return; fi
  nohup "$@" >"$DIR/logs/$name.log" 2>&1 &
  echo $! >"$DIR/pids/$name.pid"
}
wait_for() {  # wait_for WHAT COMMAND...: up to 120 s
  [ "$DRY" = 1 ] && return 0
  local what=$1; shift
  for _ in $(seq 1 1200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "local-cluster.sh: $what did not start in 120 s; see $DIR/logs/" >&2; exit 1
}
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  run mkdir -p "$DIR/redis" "$DIR/data" "$DIR/logs" "$DIR/pids"
  # 1. Redis: Celery's broker and result backend, live progress, worker heartbeats.
  background redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$DIR/redis" --save "" --appendonly no
  wait_for "redis-server" redis-cli -p "$REDIS_PORT" ping
  # 2. PostgreSQL: the gallery's rows (jobs, pictures, users, credits) for every process.
  if [ "$POSTGRES" = 1 ]; then
    run mkdir -p "$DIR/postgres"
    if [ "$(id -u)" = 0 ]; then
      run chown postgres: "$DIR/postgres"
      if [ "$DRY" = 0 ] && ! runuser -u postgres -- test -w "$DIR/postgres"; then
        echo "local-cluster.sh: the postgres user cannot reach $DIR/postgres: let it enter every folder above it (chmod o+x), or use --dir elsewhere" >&2
        exit 1
      fi
    fi
    if [ ! -f "$DIR/postgres/data/PG_VERSION" ]; then
      as_pg "$PG_BIN/initdb" -D "$DIR/postgres/data" -U reverie --auth=trust -E UTF8 --locale=C >/dev/null
    fi
    as_pg "$PG_BIN/pg_ctl" -D "$DIR/postgres/data" -l "$DIR/postgres/server.log" -w \
      -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=$DIR/postgres" start >/dev/null
    as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U reverie reverie 2>/dev/null || true
  fi
  # 3. The gallery made and migrated once, before the processes share it.
  # shellcheck disable=SC2086
  run $REVERIE users list --data "$DIR/data" ${DATABASE:+--database "$DATABASE"} >/dev/null
  # 4. Workers (one per device), then front ends.
  for i in $(seq 0 $((WORKERS - 1))); do
    local device=$DEVICE
    [ "$DEVICE" = cuda ] && device="cuda:$i"
    # shellcheck disable=SC2086
    background "worker-$i" env OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" $REVERIE worker --broker "$BROKER" \
      --data "$DIR/data" ${DATABASE:+--database "$DATABASE"} --device "$device" --batch-limit "$BATCH_LIMIT"
  done
  for i in $(seq 0 $((FRONT_ENDS - 1))); do
    # shellcheck disable=SC2086
    background "serve-$i" $REVERIE serve --host 127.0.0.1 --port $((PORT + i)) --broker "$BROKER" \
      --data "$DIR/data" ${DATABASE:+--database "$DATABASE"} --device cpu ${MODEL:+--model "$MODEL"}
  done
  for i in $(seq 0 $((FRONT_ENDS - 1))); do
    wait_for "front end $i" curl -sf "http://127.0.0.1:$((PORT + i))/healthz"
  done
  for i in $(seq 0 $((WORKERS - 1))); do
    wait_for "worker $i" grep -q " ready." "$DIR/logs/worker-$i.log"
  done
  [ "$DRY" = 1 ] && return 0
  echo "reverie cluster in $DIR: $WORKERS worker(s), $FRONT_ENDS front end(s)"
  echo "  broker    $BROKER"
  echo "  database  ${DATABASE:-$DIR/data/gallery.sqlite}"
  for i in $(seq 0 $((FRONT_ENDS - 1))); do echo "  studio    http://127.0.0.1:$((PORT + i))/   (metrics: /metrics)"; done
  echo "  stop with: $0 stop --dir $DIR"
}

stop() {
  local pid
  # Workers and front ends first (SIGTERM: a running job goes back to the queue), then the servers.
  for file in "$DIR"/pids/worker-*.pid "$DIR"/pids/serve-*.pid; do
    alive "$file" && run kill -TERM "$(cat "$file")"
  done
  for file in "$DIR"/pids/worker-*.pid "$DIR"/pids/serve-*.pid; do
    [ -f "$file" ] || continue
    pid=$(cat "$file")
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && run kill -KILL "$pid"
    [ "$DRY" = 1 ] || rm -f "$file"
  done
  if [ -f "$DIR/postgres/data/postmaster.pid" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$DIR/postgres/data" -m fast -w stop >/dev/null
  fi
  if alive "$DIR/pids/redis.pid"; then
    run kill -TERM "$(cat "$DIR/pids/redis.pid")"
    [ "$DRY" = 1 ] || rm -f "$DIR/pids/redis.pid"
  fi
  echo "reverie cluster in $DIR stopped"
}

status() {
  for file in "$DIR"/pids/*.pid; do
    [ -f "$file" ] || continue
    if alive "$file"; then echo "$(basename "$file" .pid): running ($(cat "$file"))"; else echo "$(basename "$file" .pid): stopped"; fi
  done
  [ -f "$DIR/postgres/data/postmaster.pid" ] && echo "postgres: running" || true
}

"$ACTION"
