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

shopt -s nullglob globstar
# unit/: pure modules, fixtures and fakes; kernel/: the conntrack sources
# against a real kernel; fuzz/; daemon/ and systemd/: the daemon process.
isolated=(test/unit/**/*.test.ts test/kernel/*.test.ts test/fuzz/*.test.ts test/daemon/*.test.ts test/systemd/*.test.ts)
if [ "${1:-}" = --list-isolated ]; then
  printf '%s\n' "${isolated[@]}"
  exit 0
fi

bash scripts/install-test-deps.sh
npm run build

echo "== lint, format, types"
npx eslint .
npx prettier --check .
npx tsc --noEmit
node scripts/clang-format-check.js

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
failed_runs=()
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
"${prefix[@]}" "${runner[@]}" --test-reporter-destination="$counts/isolated" "${isolated[@]}" || failed_runs+=(isolated)
if [ -n "$ns" ]; then
  ip netns del "$ns"
  ns=
fi

echo "== end-to-end tests (${#hosted[@]} files, in the host network namespace)"
"${runner[@]}" --test-reporter-destination="$counts/hosted" "${hosted[@]}" || failed_runs+=(hosted)

# The same suites again with every daemon started with --bind-ports (issue
# 16): what they prove must hold with the flag on. bind-ports.e2e sets the
# flag itself and skips this run.
echo "== end-to-end tests again, with --bind-ports (${#hosted[@]} files)"
IDENTD_E2E_BIND_PORTS=1 "${runner[@]}" --test-reporter-destination="$counts/bindports" "${hosted[@]}" ||
  failed_runs+=(bindports)

# A run's summary is its last "# pass N", "# fail N", ... lines. The runner
# counts tests only: a suite whose before/after hook failed is a top-level
# "not ok" with every test passed, so a run's failures are the larger of its
# failed tests and its failed top-level entries, and at least 1 if it exited
# non-zero.
count() {
  awk -v k="$2" '$1 == "#" && $2 == k && NF == 3 { n = $3 } END { print n + 0 }' "$counts/$1"
}
passed=0 failed=0 skipped=0
for run in isolated hosted bindports; do
  [ -f "$counts/$run" ] || touch "$counts/$run"
  f=$(count "$run" fail)
  top=$(grep -c '^not ok ' "$counts/$run" || true)
  [ "$top" -gt "$f" ] && f=$top
  case " ${failed_runs[*]} " in *" $run "*) [ "$f" -gt 0 ] || f=1 ;; esac
  passed=$((passed + $(count "$run" pass)))
  failed=$((failed + f))
  skipped=$((skipped + $(count "$run" skipped)))
done
[ ${#failed_runs[@]} -eq 0 ] || rc=1
echo "total: $passed passed, $failed failed, $skipped skipped"
exit $rc
