#!/usr/bin/env bash
# Memory checks of the native conntrack addon (run as root; everything runs in
# network namespaces this script creates and deletes):
#
#  1. native/test/selftest.cc (ct.cc without Node: handles, GET, dumps, bulk
#     insert, pool, lane) under valgrind memcheck: no errors, no leaks of any
#     kind, no file descriptors left open.
#  2. The same self-test built with AddressSanitizer, LeakSanitizer and UBSan.
#  3. The whole addon (native/*.cc) built with ASan+LSan+UBSan, loaded by
#     Node (DOCKER_IDENTD_CONNTRACK_ADDON) and driven through every path by
#     `test/support/netlink-extras.ts stress`: hits, misses, concurrency,
#     second tries (one, none, several matches), inserts, close() with lookups
#     in flight, sources left to the garbage collector, worker threads
#     terminated mid-lookup. (UBSan's vptr check is off for the addon: it
#     flags a static_cast inside node-addon-api's own ObjectWrap constructor.)
#
# Exits non-zero on any finding. Usage: bash test/native-memcheck.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "native-memcheck: needs root (network namespaces, conntrack inserts)" >&2
  exit 1
fi
for tool in valgrind pkg-config g++ ip; do
  command -v "$tool" >/dev/null || { echo "native-memcheck: $tool is not installed" >&2; exit 1; }
done

out=$(mktemp -d)
ns="dkid-memcheck-$$"
cleanup() {
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$out"
}
trap cleanup EXIT
fresh_ns() {
  ip netns del "$ns" 2>/dev/null || true
  ip netns add "$ns"
  ip netns exec "$ns" ip link set lo up
}

CT_LIBS=$(pkg-config --cflags --libs libnetfilter_conntrack libmnl)
NAPI_INC=$(node -p "require('node-addon-api').include_dir")
CXXFLAGS=(-std=c++17 -Wall -Wextra -g -O1 -fno-omit-frame-pointer -pthread)

echo "== 1. self-test under valgrind"
g++ "${CXXFLAGS[@]}" native/test/selftest.cc native/ct.cc $CT_LIBS -o "$out/selftest"
fresh_ns
ip netns exec "$ns" valgrind --quiet --leak-check=full --show-leak-kinds=all --errors-for-leak-kinds=all \
  --track-fds=yes --error-exitcode=99 "$out/selftest" 2>&1 | tee "$out/valgrind.log"
# --track-fds lists what is open at exit: inherited descriptors are fine, one
# the self-test opened (shown with its stack) is a leak.
if grep -A1 -E "^==[0-9]+== Open " "$out/valgrind.log" | grep -qE "^==[0-9]+==    at "; then
  echo "native-memcheck: the self-test left file descriptors open" >&2
  exit 1
fi
echo "valgrind: clean"

echo "== 2. self-test with AddressSanitizer, LeakSanitizer, UBSan"
g++ "${CXXFLAGS[@]}" -fsanitize=address,undefined -fno-sanitize-recover=all \
  native/test/selftest.cc native/ct.cc $CT_LIBS -o "$out/selftest-asan"
fresh_ns
ASAN_OPTIONS=detect_leaks=1 ip netns exec "$ns" "$out/selftest-asan"
echo "sanitizers: clean"

echo "== 3. the addon with ASan+LSan+UBSan under Node (stress run)"
g++ "${CXXFLAGS[@]}" -shared -fPIC -fexceptions -fsanitize=address,undefined -fno-sanitize=vptr \
  -fno-sanitize-recover=all -DNAPI_VERSION=8 -DNAPI_CPP_EXCEPTIONS -DNODE_ADDON_API_DISABLE_DEPRECATED \
  -DNODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS \
  -I/usr/include/node -I"$NAPI_INC" native/*.cc $CT_LIBS -o "$out/conntrack_netlink.node"
fresh_ns
LD_PRELOAD="$(g++ -print-file-name=libasan.so)" ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  DOCKER_IDENTD_CONNTRACK_ADDON="$out/conntrack_netlink.node" \
  ip netns exec "$ns" node --expose-gc --import tsx test/support/netlink-extras.ts stress 2>&1 | tee "$out/node-asan.log"
if grep -qE "ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:" "$out/node-asan.log"; then
  echo "native-memcheck: sanitizer findings in the addon" >&2
  exit 1
fi
echo "addon under Node with sanitizers: clean"
echo "native-memcheck: 3 passed, 0 failed"
