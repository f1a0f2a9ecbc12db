#!/usr/bin/env bash
# Makes docker-identd a command that starts at once: DIR/docker-identd
# (default /usr/local/bin, on root's PATH) becomes a link to this checkout's
# bin/docker-identd.js. A link already there (from another checkout, say) is
# replaced; anything else is left alone, with a word on stderr.
# Usage: bash scripts/link-command.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-/usr/local/bin}/docker-identd
if [ -L "$cmd" ] || [ ! -e "$cmd" ]; then
  ln -sfn "$PWD/bin/docker-identd.js" "$cmd"
  echo "setup: $cmd -> $PWD/bin/docker-identd.js"
else
  echo "setup: $cmd exists and is not a link, so it was left alone; run node $PWD/bin/docker-identd.js" >&2
fi
