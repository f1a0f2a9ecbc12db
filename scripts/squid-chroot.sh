#!/usr/bin/env bash
# Builds a Debian chroot with that release's Squid, for the end-to-end tests
# of Squid versions other than the host's (test/e2e/squid-versions.e2e.test.ts):
#
#   bash scripts/squid-chroot.sh trixie /var/cache/docker-identd-test/squid-trixie   # Squid 6.x
#   bash scripts/squid-chroot.sh sid    /var/cache/docker-identd-test/squid-sid      # Squid 7.x
#
# Does nothing when DIR/.squid-chroot-ok exists (the cache is reused). Builds
# in DIR.tmp and renames it at the end, so an interrupted build never looks
# complete. Every mount (the /proc that Squid's postinst needs) lives in a
# private mount namespace (unshare -m), so none outlives this script, whatever
# happens to it. Run as root.
set -euo pipefail
suite=${1:?usage: squid-chroot.sh SUITE DIR}
dir=${2:?usage: squid-chroot.sh SUITE DIR}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
[ -f "$dir/.squid-chroot-ok" ] && exit 0
tmp=$dir.tmp
rm -rf --one-file-system "$tmp"
mkdir -p "$(dirname "$dir")"
echo "squid-chroot: debootstrap $suite into $tmp (from $mirror)" >&2
debootstrap --variant=minbase "$suite" "$tmp" "$mirror" >"$tmp.log" 2>&1 || {
  tail -20 "$tmp.log" >&2
  exit 1
}
# No daemons started by package scripts inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
chmod 755 "$tmp/usr/sbin/policy-rc.d"
# The mirror's Release files may be past their Valid-Until.
echo 'Acquire::Check-Valid-Until "false";' >"$tmp/etc/apt/apt.conf.d/99no-valid-until"
unshare --mount --propagation private -- sh -euc '
  mount -t proc proc "$1/proc"
  chroot "$1" apt-get -o Acquire::Check-Valid-Until=false -qq update
  DEBIAN_FRONTEND=noninteractive chroot "$1" apt-get install -y -qq --no-install-recommends squid
  chroot "$1" apt-get clean
' sh "$tmp" >>"$tmp.log" 2>&1 || {
  tail -20 "$tmp.log" >&2
  exit 1
}
chroot "$tmp" /usr/sbin/squid -v | head -1 >"$tmp/.squid-chroot-ok"
rm -rf --one-file-system "$dir"
mv "$tmp" "$dir"
mv "$tmp.log" "$dir.log"
echo "squid-chroot: $(cat "$dir/.squid-chroot-ok") in $dir" >&2
