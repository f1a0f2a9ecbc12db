#!/usr/bin/env bash
# The whole test suite: lint and format checks, type check, unit and property
# tests, the native and procfs conntrack suites, and the end-to-end tests with
# real dockerd, Squid and network namespaces (run as root; they start and
# clean up everything themselves).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh
npm run build

echo "== lint, format, types"
npx eslint .
npx prettier --check .
npx tsc --noEmit
node scripts/clang-format-check.js

echo "== tests"
shopt -s nullglob
files=(test/unit/*.test.ts test/conntrack-*.test.ts test/daemon/*.test.ts test/systemd/*.test.ts test/e2e/*.test.ts)
node --import tsx --test --test-concurrency=1 --test-timeout=900000 "${files[@]}"
