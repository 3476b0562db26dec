#!/bin/sh
# Install what a package of ami-rcd would carry (docs/deployment.md):
#
#   deploy/install.sh central   coordinator: user rcd-central, /etc/rcd/central, unit, env file
#   deploy/install.sh edge      agent: user rcd-edge (serial lines: dialout), /etc/rcd/edge, unit, TOML
#   deploy/install.sh broker    mosquitto drop-in, ACL and an empty password file
#
# Run as root from the source tree. Idempotent: existing configuration files are
# kept (only the unit files, the drop-in, the ACL and the docs are replaced).
# RCD_ROOT (default empty, i.e. /) installs the files under another root, as a
# package build does; the users are created on this system either way.
set -eu

SRC=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${RCD_ROOT:-}
DOC=$ROOT/usr/share/doc/ami-rcd
UNITS=$ROOT/etc/systemd/system

say() { echo "install: $*"; }

user() {  # user NAME HOME GECOS [GROUP...]: a system user without a login shell
    name=$1 home=$2 gecos=$3
    shift 3
    if ! getent passwd "$name" >/dev/null; then
        useradd --system --user-group --home-dir "$home" --no-create-home \
            --shell /usr/sbin/nologin --comment "$gecos" "$name"
        say "user $name"
    fi
    for group in "$@"; do
        getent group "$group" >/dev/null || groupadd --system "$group"
        usermod --append --groups "$group" "$name"
    done
}

dir() {  # dir PATH MODE OWNER GROUP: as in tmpfiles.d/ami-rcd.conf
    install -d -m "$2" -o "$3" -g "$4" "$ROOT$1"
    chmod "$2" "$ROOT$1" && chown "$3:$4" "$ROOT$1"  # also when it existed
}

keep() {  # keep SOURCE DEST MODE OWNER GROUP: a configuration file, never overwritten
    if [ ! -e "$ROOT$2" ]; then
        install -m "$3" -o "$4" -g "$5" "$SRC/$1" "$ROOT$2"
        say "$2 (from $1: edit it)"
    fi
}

common() {
    install -d -m 0755 "$DOC" "$UNITS" "$ROOT/usr/lib/sysusers.d" "$ROOT/usr/lib/tmpfiles.d"
    install -m 0644 "$SRC/docs/"*.md "$SRC/README.md" "$DOC/"
    install -m 0644 "$SRC/deploy/sysusers.d/ami-rcd.conf" "$ROOT/usr/lib/sysusers.d/"
    install -m 0644 "$SRC/deploy/tmpfiles.d/ami-rcd.conf" "$ROOT/usr/lib/tmpfiles.d/"
    dir /etc/rcd 0755 root root
}

central() {
    common
    user rcd-central /var/lib/rcd-central "ami-rcd coordinator"
    dir /etc/rcd/central 0750 root rcd-central
    dir /var/lib/rcd-central 0700 rcd-central rcd-central
    keep deploy/central/central.env.example /etc/rcd/central/central.env 0640 root rcd-central
    install -m 0644 "$SRC/deploy/systemd/rcd-central.service" "$UNITS/"
    say "rcd-central.service"
}

edge() {
    common
    user rcd-edge /var/lib/rcd-edge "ami-rcd edge agent" dialout
    dir /etc/rcd/edge 0750 root rcd-edge
    dir /var/lib/rcd-edge 0700 rcd-edge rcd-edge
    keep deploy/edge/agent.example.toml /etc/rcd/edge/edge.toml 0640 root rcd-edge
    install -m 0644 "$SRC/deploy/systemd/rcd-edge.service" "$UNITS/"
    say "rcd-edge.service"
}

broker() {
    getent passwd mosquitto >/dev/null || { echo "install: apt-get install mosquitto first" >&2; exit 1; }
    install -d -m 0755 "$ROOT/etc/mosquitto/conf.d"
    dir /etc/mosquitto/ami-rcd 0750 root mosquitto
    install -m 0644 "$SRC/deploy/mosquitto/ami-rcd.conf" "$ROOT/etc/mosquitto/conf.d/ami-rcd.conf"
    install -m 0640 -o root -g mosquitto "$SRC/deploy/mosquitto/acl" "$ROOT/etc/mosquitto/ami-rcd/acl"
    if [ ! -e "$ROOT/etc/mosquitto/ami-rcd/passwd" ]; then
        install -m 0640 -o root -g mosquitto /dev/null "$ROOT/etc/mosquitto/ami-rcd/passwd"
    fi
    say "/etc/mosquitto/conf.d/ami-rcd.conf, /etc/mosquitto/ami-rcd/{acl,passwd}"
}

[ "$(id -u)" = 0 ] || { echo "install: run as root" >&2; exit 1; }
[ $# -gt 0 ] || { echo "usage: deploy/install.sh central|edge|broker ..." >&2; exit 2; }
for part in "$@"; do
    case $part in
        central|edge|broker) "$part" ;;
        *) echo "install: unknown part $part (central, edge, broker)" >&2; exit 2 ;;
    esac
done
