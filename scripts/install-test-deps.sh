#!/usr/bin/env bash
# Installs the real components the test suite drives: dockerd, Squid,
# iptables, busybox (for test images), a static libc (for the test client),
# clang-format, systemd's tools (systemd-analyze, systemd-socket-activate)
# with python3 for the systemd tests, debootstrap (the Squid 6 and 7 chroots,
# scripts/squid-chroot.sh) and rootful Podman with netavark (the Podman
# suite). Does nothing for what is already there.
set -euo pipefail
need=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
for pkg in squid iptables iproute2 busybox-static libc6-dev gcc clang-format conntrack procps systemd python3 util-linux openssl nftables \
  debootstrap podman netavark aardvark-dns; do
  have "$pkg" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-test-deps: not root; cannot install ${need[*]} (tests that need them will be skipped)" >&2
    exit 0
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
