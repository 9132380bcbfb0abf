#!/usr/bin/env bash
# Make sure the local Postgres and Redis that wadispatch's defaults point at are running:
# start them if they are installed but stopped, say exactly what to do otherwise.
# On CI (CI=true, root, apt available) a missing server is installed from Debian's packages.
set -uo pipefail

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {  # port name
  for _ in $(seq 1 60); do listening "$1" && return 0; sleep 0.5; done
  echo "ensure-services: $2 did not start listening on 127.0.0.1:$1 within 30 s" >&2
  return 1
}

can_install() { [ "${CI:-}" = "true" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }

ensure_postgres() {
  listening 5432 && return 0
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1 && can_install; then
    echo "ensure-services: installing PostgreSQL (CI)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  if ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "ensure-services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
    wait_for 5432 PostgreSQL || return 1
  else
    cat >&2 <<'MSG'
ensure-services: PostgreSQL is not running on 127.0.0.1:5432 and is not installed here.
  Debian/Ubuntu: sudo apt-get install postgresql, then
  pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start
  (or point WADISPATCH_DATABASE_URL at a server you have)
MSG
    return 1
  fi
}

ensure_redis() {
  listening 6379 && return 0
  if ! command -v redis-server >/dev/null && can_install; then
    echo "ensure-services: installing Redis (CI)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  if command -v redis-server >/dev/null; then
    echo "ensure-services: starting Redis"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_for 6379 Redis || return 1
  else
    cat >&2 <<'MSG'
ensure-services: Redis is not running on 127.0.0.1:6379 and is not installed here.
  Debian/Ubuntu: sudo apt-get install redis-server, then
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  (or point WADISPATCH_REDIS_URL at a server you have)
MSG
    return 1
  fi
}

# RabbitMQ is optional (Redis is the default broker): the suite's RabbitMQ module runs the core
# paths on it where it is installed, and says why it skipped where it is not.
ensure_rabbitmq() {
  listening 5672 && return 0
  if ! command -v rabbitmq-server >/dev/null && can_install; then
    echo "ensure-services: installing RabbitMQ (CI)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
  fi
  if command -v rabbitmq-server >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "ensure-services: starting RabbitMQ"
    if [ -x /etc/init.d/rabbitmq-server ]; then
      /etc/init.d/rabbitmq-server start >/dev/null 2>&1 || rabbitmq-server -detached
    else
      rabbitmq-server -detached
    fi
    wait_for 5672 RabbitMQ || echo "ensure-services: RabbitMQ did not start; its tests will skip" >&2
  else
    echo "ensure-services: RabbitMQ is not running (optional: the RabbitMQ tests will skip)" >&2
  fi
  return 0
}

status=0
ensure_postgres || status=1
ensure_redis || status=1
ensure_rabbitmq
exit $status
