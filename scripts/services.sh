#!/usr/bin/env bash
# Makes sure the databases the tests use are up: MariaDB on 127.0.0.1:3306 (root, no password) and PostgreSQL on
# 127.0.0.1:5432 (trust). Starts them when they are installed but down; installs them from Debian's packages when
# they are missing. Fails loudly if either still cannot be reached.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  as_root apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}
wait_until() { # seconds, command...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.5
  done
}

mariadb_up() { mysqladmin --protocol=tcp -h127.0.0.1 -P3306 -uroot ping; }
postgres_up() { pg_isready -q -h 127.0.0.1 -p 5432; }

if ! mariadb_up >/dev/null 2>&1; then
  [ -x /usr/sbin/mariadbd ] || apt_install mariadb-server mariadb-client
  as_root mkdir -p /run/mysqld && as_root chown mysql:mysql /run/mysqld 2>/dev/null || true
  as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql 2>/dev/null \
    || as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  wait_until 60 mariadb_up || { echo "MariaDB did not come up on 127.0.0.1:3306" >&2; exit 1; }
fi
mysql --protocol=tcp -h127.0.0.1 -uroot -e "CREATE DATABASE IF NOT EXISTS test" >/dev/null

if ! postgres_up >/dev/null 2>&1; then
  command -v pg_ctlcluster >/dev/null || apt_install postgresql postgresql-client
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_until 60 postgres_up || { echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2; exit 1; }
fi
psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE test"
echo "services: MariaDB and PostgreSQL are up"
