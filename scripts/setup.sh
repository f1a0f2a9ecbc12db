#!/usr/bin/env bash
# Installs what docker-identd needs on Debian 12 and builds it (TypeScript and
# the native conntrack addon). Run as root from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for pkg in build-essential python3 pkg-config libnetfilter-conntrack-dev libmnl-dev conntrack nftables; do
  have "$pkg" || need_apt+=("$pkg")
done
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: run as root to install: ${need_apt[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
  echo "setup: Node.js >= 20 is required (found $(node --version)); install Node 20 from your distribution's backports or NodeSource" >&2
  exit 1
fi

# Installs dependencies, builds the native addon (a failure there falls back to procfs) and compiles TypeScript.
npm ci --no-audit --no-fund
if [ -f build/Release/conntrack_netlink.node ]; then
  echo "setup: native netlink conntrack addon built"
else
  echo "setup: native addon not built; the daemon will read /proc/net/nf_conntrack"
fi

# The docker-identd command, starting at once: a link on root's PATH.
if [ "$(id -u)" = 0 ]; then
  bash scripts/link-command.sh
else
  echo "setup: not root, so no /usr/local/bin/docker-identd link; run node $PWD/bin/docker-identd.js"
fi

# `npx docker-identd` in this checkout installs the checkout into npm's npx
# cache on its first run. An interrupted first run leaves that entry broken
# (npm then says ENOENT until it is removed), so remove broken entries and
# entries for this checkout, and make the entry now.
npm cache npx ls 2>/dev/null | while IFS= read -r line; do
  key=${line%%: *}
  where=${line#*: }
  if [ "$where" = "(empty/invalid)" ] || [ "$where" = "$PWD" ]; then
    npm cache npx rm "$key" >/dev/null
  fi
done
npx --yes docker-identd --version >/dev/null
echo "setup: $(node bin/docker-identd.js --version) ready; run it as docker-identd, node bin/docker-identd.js or npx docker-identd"
