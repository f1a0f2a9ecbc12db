#!/usr/bin/env bash
# Installs docker-identd as a hardened systemd service (run as root from the
# repository, after scripts/setup.sh):
#
#   bash scripts/install.sh --allow 192.0.2.10
#
# - builds what is missing (TypeScript, the native addon: the service needs it
#   for netlink conntrack and for sd_notify);
# - copies the build with its production dependencies to /opt/docker-identd;
# - writes a commented /etc/docker-identd/config.json (kept if it exists);
# - installs docker-identd.socket and docker-identd.service in
#   /etc/systemd/system, with drop-ins for the allowed proxy addresses
#   (docker-identd.socket.d/10-allow.conf) and, with --docker-host, the Docker
#   API access (docker-identd.service.d/20-docker.conf);
# - the service runs as a DynamicUser (no account to create), with
#   CAP_NET_ADMIN only;
# - enables and starts the socket and the service when systemd is running.
#
# Options:
#   --allow ADDR[/PREFIX]  proxy (Squid) address or network; repeatable. Goes
#                          into the socket unit's IPAddressAllow= and the
#                          daemon's own allowlist. Without it only localhost.
#   --docker-host URL      Docker API to use instead of /var/run/docker.sock,
#                          e.g. a read-only filtering proxy: unix:///path or
#                          tcp://127.0.0.1:2375 (drops the docker group).
#   --prefix DIR           install directory (default /opt/docker-identd). It is
#                          replaced as a whole, so it must not exist yet or be
#                          one install.sh made (it marks it): --prefix /opt is
#                          refused.
#   --root DIR             install into DIR as a file system root (packaging,
#                          tests); implies --no-start
#   --no-start             do not enable or start the units
#   --force-config         overwrite an existing config.json
#   --bind-ports           answer only for containers pinned to their bridge
#                          port (README: "Binding names to bridge ports"):
#                          "bind-ports": true in a new config.json, and the
#                          drop-in docker-identd.service.d/40-bind-ports.conf
#
# Undo with scripts/uninstall.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
# shellcheck source=scripts/prefix.sh
. scripts/prefix.sh

PREFIX=/opt/docker-identd
ROOT=
START=1
FORCE_CONFIG=0
BIND_PORTS=0
DOCKER_HOST_URL=
ALLOW=()

die() {
  echo "install: $*" >&2
  exit 1
}
while [ $# -gt 0 ]; do
  case "$1" in
    --allow) [ $# -ge 2 ] || die "--allow needs an address"; ALLOW+=("$2"); shift 2 ;;
    --docker-host) [ $# -ge 2 ] || die "--docker-host needs a URL"; DOCKER_HOST_URL=$2; shift 2 ;;
    --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX=$2; shift 2 ;;
    --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$(realpath -m "$2"); START=0; shift 2 ;;
    --no-start) START=0; shift ;;
    --force-config) FORCE_CONFIG=1; shift ;;
    --bind-ports) BIND_PORTS=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (try --help)" ;;
  esac
done
PREFIX=$(prefix_normalize "$PREFIX")
[ -n "$PREFIX" ] || die "--prefix must be an absolute path"
# The program directory is replaced as a whole: only one this script made.
prefix_is_ours "$ROOT$PREFIX" ||
  die "refusing --prefix $PREFIX: $ROOT$PREFIX exists and is not a docker-identd installation (no $PREFIX_MARKER in it); it would be replaced as a whole. Choose a directory that does not exist yet."
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then die "run as root (or use --root DIR to stage the files)"; fi

DOCKER_SCHEME=
if [ -n "$DOCKER_HOST_URL" ]; then
  case "$DOCKER_HOST_URL" in
    unix:///*) DOCKER_SCHEME=unix ;;
    tcp://* | http://*) DOCKER_SCHEME=tcp ;;
    *) die "--docker-host must be unix:///path or tcp://host:port" ;;
  esac
fi

NODE=$(command -v node) || die "node is not installed (run scripts/setup.sh)"
NODE=$(realpath "$NODE")
major=$("$NODE" -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 20 ] || die "Node.js >= 20 is required (found $("$NODE" --version))"

# --- build what is missing ---
if [ ! -f dist/cli/main.js ] || [ -n "$(find src -newer dist/cli/main.js -name '*.ts' -print -quit)" ]; then
  echo "install: compiling TypeScript"
  npm run --silent build
fi
ADDON=build/Release/conntrack_netlink.node
if [ ! -f "$ADDON" ]; then
  echo "install: building the native addon"
  npx --no-install node-gyp rebuild >/dev/null || true
fi
[ -f "$ADDON" ] || die "the native addon ($ADDON) did not build; the service needs it (netlink conntrack, sd_notify). Run scripts/setup.sh"
"$NODE" -e 'const a=require(process.argv[1]); if (typeof a.notify !== "function") process.exit(1)' "$REPO/$ADDON" ||
  die "$ADDON has no notify(): rebuild it (npm run build:native)"

# Addresses are checked the way the daemon checks them (src/lib/ip.ts, built above),
# before anything is installed.
[ -f dist/lib/ip.js ] || die "dist/lib/ip.js is missing after the build; cannot check --allow"
for a in "${ALLOW[@]}"; do
  "$NODE" -e 'const {parseCidr}=require(process.argv[1]); if(!parseCidr(process.argv[2])) process.exit(1)' \
    "$REPO/dist/lib/ip.js" "$a" || die "--allow: \"$a\" is not an address or CIDR"
done

# --- the program: build and production dependencies ---
DEST="$ROOT$PREFIX"
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/app/build/Release"
cp -r bin dist package.json package-lock.json README.md "$STAGE/app/"
cp "$ADDON" "$STAGE/app/build/Release/"
cp -r node_modules "$STAGE/app/"
# Drop the development dependencies (offline: prunes the copied tree).
(cd "$STAGE/app" && npm prune --omit=dev --ignore-scripts --no-audit --no-fund >/dev/null)
rm -f "$STAGE/app/package-lock.json"
find "$STAGE/app/dist" -name '*.map' -delete
# The node binary must be readable by the service: ProtectHome= hides home directories.
EXEC_NODE=$NODE
case "$NODE" in
  /root/* | /home/* | /run/user/*)
    mkdir -p "$STAGE/app/runtime"
    cp "$NODE" "$STAGE/app/runtime/node"
    EXEC_NODE="$PREFIX/runtime/node"
    echo "install: $NODE is under a home directory the service cannot see; copied to $EXEC_NODE"
    ;;
esac
{
  echo "docker-identd, installed by scripts/install.sh; replaced as a whole by the next install"
  echo "and removed by scripts/uninstall.sh. Keep nothing else in this directory."
} >"$STAGE/app/$PREFIX_MARKER"
mkdir -p "$(dirname "$DEST")"
# Copied next to its place, then swapped in: a name of our own, never one that may exist.
NEW=$(mktemp -d "$(dirname "$DEST")/.docker-identd-new.XXXXXX")
trap 'rm -rf "$STAGE" "$NEW"' EXIT
cp -r "$STAGE/app/." "$NEW"
chown -R 0:0 "$NEW" 2>/dev/null || true
chmod -R u=rwX,go=rX "$NEW"
prefix_is_ours "$DEST" || die "$DEST changed while installing and is not a docker-identd installation; not replaced"
rm -rf "$DEST"
mv "$NEW" "$DEST"
echo "install: program in $DEST"

# --- the config file (kept if it exists) ---
ETC="$ROOT/etc/docker-identd"
CONFIG="$ETC/config.json"
mkdir -p "$ETC"
if [ -f "$CONFIG" ] && [ "$FORCE_CONFIG" = 0 ]; then
  echo "install: keeping $CONFIG (--force-config writes a new one); the allow list in it is not changed"
else
  "$NODE" - "$CONFIG" "${DOCKER_HOST_URL:-unix:///var/run/docker.sock}" "$BIND_PORTS" "${ALLOW[@]}" <<'EOF'
const fs = require('node:fs');
const [file, dockerHost, bindPorts, ...allow] = process.argv.slice(2);
const config = {
  '//': [
    'docker-identd configuration (keys starting with // are comments).',
    'systemctl reload docker-identd applies allow, log-level and name-template at once;',
    'the other settings need systemctl restart docker-identd.',
  ],
  '// allow':
    'Proxy (Squid) addresses or networks whose queries are answered; others are closed unanswered. ' +
    'Keep in step with IPAddressAllow= in /etc/systemd/system/docker-identd.socket.d/10-allow.conf.',
  allow: allow.length > 0 ? allow : ['127.0.0.1', '::1'],
  '// docker-host':
    'Docker Engine API. docker.sock gives full control of Docker (root on the host); the daemon only ' +
    'reads (GET /containers/json, /containers/ID/json, /events, and /networks/docker_gwbridge at every ' +
    'listing, for swarm tasks), so a read-only filtering proxy that passes only those is safer.',
  'docker-host': dockerHost,
  '// conntrack':
    'netlink: the service runs without root, so the /proc/net/nf_conntrack fallback cannot work.',
  conntrack: 'netlink',
  '// log-level': 'fatal, error, warn, info (one line per query), debug, trace or silent.',
  'log-level': 'info',
  '// idle-timeout': 'Seconds a connection may stay silent.',
  'idle-timeout': 10,
  '// name-template':
    'What is answered for a container: name, label:KEY, compose (project.service), swarm, a pattern ' +
    'such as {label:team}-{name}, or alternatives separated by |. Nothing found: NO-USER. See README.md.',
  'name-template': 'name',
  '// metrics':
    'Set to 127.0.0.1:9113 to serve /metrics, /healthz and /readyz; the service then needs the drop-in ' +
    'described in README.md ("Metrics and health") to open an Internet socket.',
  '// bind-ports':
    'true: answer only for containers whose address is pinned to their own bridge port by the nft table ' +
    'bridge docker_identd, which the daemon keeps (needs the drop-in 40-bind-ports.conf). See README.md.',
  'bind-ports': bindPorts === '1',
  '// listen':
    'Not used by the service: the port comes from docker-identd.socket (ListenStream=113).',
};
fs.writeFileSync(file, JSON.stringify(config, null, 2) + '\n', { mode: 0o644 });
EOF
  chmod 0644 "$CONFIG"
  echo "install: wrote $CONFIG"
fi

# --- units and drop-ins ---
UNITS="$ROOT/etc/systemd/system"
mkdir -p "$UNITS"
sed -e "s|^ExecStart=/usr/bin/node /opt/docker-identd/|ExecStart=$EXEC_NODE $PREFIX/|" \
  -e "s|/opt/docker-identd/README.md|$PREFIX/README.md|" \
  systemd/docker-identd.service >"$UNITS/docker-identd.service"
sed -e "s|/opt/docker-identd/README.md|$PREFIX/README.md|" systemd/docker-identd.socket >"$UNITS/docker-identd.socket"
chmod 0644 "$UNITS/docker-identd.service" "$UNITS/docker-identd.socket"

if [ ${#ALLOW[@]} -gt 0 ]; then
  mkdir -p "$UNITS/docker-identd.socket.d"
  {
    echo "# Written by scripts/install.sh --allow: the proxies that may query docker-identd."
    echo "# Keep in step with \"allow\" in /etc/docker-identd/config.json."
    echo "[Socket]"
    echo "IPAddressAllow=${ALLOW[*]}"
  } >"$UNITS/docker-identd.socket.d/10-allow.conf"
else
  echo "install: WARNING: no --allow given: only localhost may query (add --allow ADDR for your proxy)" >&2
fi

rm -f "$UNITS/docker-identd.service.d/20-docker.conf"
if [ -n "$DOCKER_HOST_URL" ]; then
  mkdir -p "$UNITS/docker-identd.service.d"
  {
    echo "# Written by scripts/install.sh --docker-host $DOCKER_HOST_URL"
    echo "[Service]"
    echo "# No docker group: the Docker API is reached through $DOCKER_HOST_URL."
    echo "SupplementaryGroups="
    if [ "$DOCKER_SCHEME" = unix ]; then
      sock=${DOCKER_HOST_URL#unix://}
      group=$(stat -c %G "$ROOT$sock" 2>/dev/null || true)
      if [ -n "$group" ] && [ "$group" != root ] && [ "$group" != docker ]; then
        echo "SupplementaryGroups=$group"
      elif [ -z "$group" ]; then
        echo "install: note: $sock does not exist yet; make it readable by the service (a group in SupplementaryGroups=)" >&2
      fi
    else
      hostport=${DOCKER_HOST_URL#*://}
      hostport=${hostport%%/*}
      host=${hostport%:*}
      host=${host#[}
      host=${host%]}
      echo "# A TCP Docker API needs Internet sockets, and that address."
      echo "RestrictAddressFamilies=AF_INET AF_INET6"
      echo "IPAddressAllow=$host"
    fi
  } >"$UNITS/docker-identd.service.d/20-docker.conf"
elif [ -z "$ROOT" ] && ! getent group docker >/dev/null; then
  echo "install: WARNING: there is no docker group yet; the service needs it for /var/run/docker.sock (install Docker first)" >&2
fi
rm -f "$UNITS/docker-identd.service.d/40-bind-ports.conf"
if [ "$BIND_PORTS" = 1 ]; then
  mkdir -p "$UNITS/docker-identd.service.d"
  install -m 0644 systemd/bind-ports.conf "$UNITS/docker-identd.service.d/40-bind-ports.conf"
  if [ -f "$CONFIG" ] && ! grep -q '"bind-ports": true' "$CONFIG"; then
    echo "install: note: set \"bind-ports\": true in $CONFIG (kept as it was)" >&2
  fi
fi
echo "install: units in $UNITS"

if [ "$START" = 1 ]; then
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable docker-identd.socket docker-identd.service
    systemctl restart docker-identd.socket
    systemctl restart docker-identd.service
    systemctl --no-pager --lines=5 status docker-identd.service || true
  else
    echo "install: systemd is not running here; start later with: systemctl enable --now docker-identd.socket docker-identd.service"
  fi
fi
echo "install: done (remove with: bash scripts/uninstall.sh)"
