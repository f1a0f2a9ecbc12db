#!/usr/bin/env bash
# The whole test suite: lint and format checks, type check, unit and property
# tests, the native and procfs conntrack suites, and the end-to-end tests with
# real dockerd, Squid and network namespaces (run as root; they start and
# clean up everything themselves).
#
# As root, the suites that need no host network (unit, conntrack, daemon,
# systemd) run inside a brand-new network namespace with no rules, as on a
# machine where dockerd never ran, so that this machine's leftovers cannot make
# them pass. The end-to-end suites need the host namespace (dockerd, Squid).
# The two runs are counted together in the last line.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh
npm run build

echo "== lint, format, types"
npx eslint .
npx prettier --check .
npx tsc --noEmit
node scripts/clang-format-check.js

shopt -s nullglob
isolated=(test/unit/*.test.ts test/conntrack-*.test.ts test/daemon/*.test.ts test/systemd/*.test.ts)
hosted=(test/e2e/*.test.ts)
counts=$(mktemp -d)
ns=
cleanup() {
  [ -z "$ns" ] || ip netns del "$ns" 2>/dev/null || true
  rm -rf "$counts"
}
trap cleanup EXIT

# The node test runner: the usual report on stdout, and a TAP copy in
# $counts/LABEL for the totals.
runner=(node --import tsx --test --test-concurrency=1 --test-timeout=900000
  --test-reporter=spec --test-reporter-destination=stdout --test-reporter=tap)

rc=0
prefix=()
where="this network namespace"
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null 2>&1; then
  ns=docker-identd-test-$$
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  prefix=(ip netns exec "$ns")
  where="the fresh network namespace $ns (no rules)"
fi
echo "== tests without the host network (${#isolated[@]} files, in $where)"
"${prefix[@]}" "${runner[@]}" --test-reporter-destination="$counts/isolated" "${isolated[@]}" || rc=1
if [ -n "$ns" ]; then
  ip netns del "$ns"
  ns=
fi

echo "== end-to-end tests (${#hosted[@]} files, in the host network namespace)"
"${runner[@]}" --test-reporter-destination="$counts/hosted" "${hosted[@]}" || rc=1

# The summary of each run is its last "# tests N", "# pass N", ... lines.
sum() {
  awk -v k="$1" '$1 == "#" && $2 == k && NF == 3 { last[FILENAME] = $3 }
    END { for (f in last) n += last[f]; print n + 0 }' "$counts"/*
}
echo "total: $(sum pass) passed, $(sum fail) failed, $(sum skipped) skipped"
exit $rc
