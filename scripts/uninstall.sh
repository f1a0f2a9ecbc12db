#!/usr/bin/env bash
# Removes what scripts/install.sh installed: stops and disables the units,
# deletes them with their drop-ins, the program directory and the config.
# The service ran as a DynamicUser, so there is no account to delete.
#
#   bash scripts/uninstall.sh [--keep-config] [--prefix DIR] [--root DIR]
set -euo pipefail
# shellcheck source=scripts/prefix.sh
. "$(dirname "$0")/prefix.sh"

PREFIX=/opt/docker-identd
ROOT=
KEEP_CONFIG=0
die() {
  echo "uninstall: $*" >&2
  exit 1
}
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX=$2; shift 2 ;;
    --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$(realpath -m "$2"); shift 2 ;;
    --keep-config) KEEP_CONFIG=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (try --help)" ;;
  esac
done
PREFIX=$(prefix_normalize "$PREFIX")
[ -n "$PREFIX" ] || die "--prefix must be an absolute path"
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then die "run as root"; fi
# Checked before anything is changed: the program directory is removed as a whole.
prefix_is_ours "$ROOT$PREFIX" ||
  die "refusing --prefix $PREFIX: $ROOT$PREFIX is not a docker-identd installation (no $PREFIX_MARKER in it); nothing was changed"

UNITS="$ROOT/etc/systemd/system"
if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
  systemctl disable --now docker-identd.service docker-identd.socket 2>/dev/null || true
fi
rm -f "$UNITS/docker-identd.service" "$UNITS/docker-identd.socket"
rm -f "$UNITS/docker-identd.socket.d/10-allow.conf" "$UNITS/docker-identd.service.d/20-docker.conf" \
  "$UNITS/docker-identd.service.d/40-bind-ports.conf"
rmdir "$UNITS/docker-identd.socket.d" "$UNITS/docker-identd.service.d" 2>/dev/null || true
if [ -d "$UNITS/docker-identd.socket.d" ] || [ -d "$UNITS/docker-identd.service.d" ]; then
  echo "uninstall: left drop-in directories with files of your own in $UNITS/docker-identd.*.d"
fi
if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl reset-failed docker-identd.service docker-identd.socket 2>/dev/null || true
fi
rm -rf "$ROOT${PREFIX:?}"
if [ "$KEEP_CONFIG" = 0 ]; then
  rm -rf "$ROOT/etc/docker-identd"
else
  echo "uninstall: kept $ROOT/etc/docker-identd"
fi
echo "uninstall: done"
