// Self-test of native/ct.cc without Node, for valgrind and AddressSanitizer
// (see test/native-memcheck.sh). Must run as root inside a network namespace
// of its own: it inserts conntrack entries. Prints "N passed, N failed".
#include <arpa/inet.h>
#include <errno.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <linux/netlink.h>
#include <sys/socket.h>
#include <time.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../ct.h"

namespace {

int passed = 0;
int failed = 0;

void check(bool ok, const char* what) {
  if (ok) {
    passed++;
  } else {
    failed++;
    std::printf("FAIL: %s\n", what);
  }
}

ct::Tuple tuple(int family, const char* src, const char* dst, uint16_t sport, uint16_t dport) {
  ct::Tuple t;
  ct::parseAddr(family, src, t.src);
  ct::parseAddr(family, dst, t.dst);
  t.sport = sport;
  t.dport = dport;
  return t;
}

// Insert records (see Handle::insert) for `n` masqueraded connections:
// orig 10.9.x.y:1000+i -> 198.51.100.7:80, reply 198.51.100.7:80 ->
// 203.0.113.9:20000+i (IPv6: 2001:db8:... likewise).
std::vector<uint8_t> records(int family, int n, const char* replySrc) {
  size_t alen = ct::addrLen(family);
  std::vector<uint8_t> out;
  for (int i = 0; i < n; i++) {
    uint8_t a[4][16];
    char src[64];
    if (family == 4)
      std::snprintf(src, sizeof src, "10.9.%d.%d", i / 250, i % 250 + 1);
    else
      std::snprintf(src, sizeof src, "2001:db8:c::%x", i + 1);
    ct::parseAddr(family, src, a[0]);
    ct::parseAddr(family, family == 4 ? "198.51.100.7" : "2001:db8:e::7", a[1]);
    ct::parseAddr(family, replySrc, a[2]);
    ct::parseAddr(family, family == 4 ? "203.0.113.9" : "2001:db8:f::9", a[3]);
    for (auto& addr : a) out.insert(out.end(), addr, addr + alen);
    uint16_t ports[4] = {static_cast<uint16_t>(1000 + i), 80, 80, static_cast<uint16_t>(20000 + i)};
    for (uint16_t p : ports) {
      out.push_back(p >> 8);
      out.push_back(p & 0xff);
    }
  }
  return out;
}

void testAddresses() {
  uint8_t a[16];
  check(ct::parseAddr(4, "192.0.2.1", a) && ct::formatAddr(4, a) == "192.0.2.1", "ipv4 round trip");
  check(!ct::parseAddr(4, "192.0.2", a), "bad ipv4 refused");
  check(!ct::parseAddr(6, "192.0.2.1", a), "ipv4 text refused for ipv6");
  const char* cases[][2] = {
      {"2001:db8::1", "2001:db8::1"},
      {"2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"},
      {"2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"},  // one zero group stays
      {"2001:0:0:1:0:0:0:1", "2001:0:0:1::1"},           // longest run wins
      {"2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"},     // first of equal runs
      {"::", "::"},
      {"::1", "::1"},
      {"::ffff:192.0.2.5", "192.0.2.5"},  // mapped: dotted quad, as canonicalIp
      {"::192.0.2.5", "::c000:205"},
      {"FE80::ABCD", "fe80::abcd"},
  };
  for (auto& c : cases) {
    bool ok = ct::parseAddr(6, c[0], a) && ct::formatAddr(6, a) == c[1];
    check(ok, (std::string("format ") + c[0]).c_str());
  }
  ct::Cidr cidr;
  cidr.family = 4;
  ct::parseAddr(4, "198.51.100.0", cidr.addr);
  cidr.prefix = 25;
  ct::parseAddr(4, "198.51.100.127", a);
  check(ct::cidrContains(cidr, 4, a), "cidr contains");
  ct::parseAddr(4, "198.51.100.128", a);
  check(!ct::cidrContains(cidr, 4, a), "cidr excludes");
  check(!ct::cidrContains(cidr, 6, a), "cidr family");
  cidr.prefix = 0;
  check(ct::cidrContains(cidr, 4, a), "cidr /0");
  check(std::string(ct::tcpStateName(3)) == "ESTABLISHED" && ct::tcpStateName(42) == nullptr,
        "tcp state names");
  auto names = ct::statusNames(0x8);
  check(names.size() == 2 && std::string(names[1]) == "UNREPLIED", "status names");
}

void testNetlink(int family) {
  const char* proxy = family == 4 ? "198.51.100.7" : "2001:db8:e::7";
  std::unique_ptr<ct::Handle> h;
  int r = ct::Handle::open(&h);
  check(r == 0, "open handle");
  if (r != 0) return;
  std::vector<uint8_t> recs = records(family, 500, proxy);
  size_t inserted = 0, existed = 0;
  r = h->insert(family, recs.data(), 500, 600, &inserted, &existed);
  check(r == 0 && inserted == 500 && existed == 0, "insert 500");
  r = h->insert(family, recs.data(), 10, 600, &inserted, &existed);
  check(r == 0 && inserted == 0 && existed == 10, "insert existing");

  ct::Entry e;
  bool found = false;
  const char* local = family == 4 ? "203.0.113.9" : "2001:db8:f::9";
  r = h->get(family, tuple(family, proxy, local, 80, 20042), &e, &found);
  check(r == 0 && found && e.orig.sport == 1042 && e.tcpState == 3 && e.hasStatus,
        "get by reply tuple");
  r = h->get(family, tuple(family, proxy, local, 80, 1), &e, &found);
  check(r == 0 && !found, "get absent");
  // The ORIGINAL tuple of an entry as key: the kernel returns that entry,
  // whose reply tuple differs: not found.
  ct::Tuple orig = e.orig;
  r = h->get(family, orig, &e, &found);
  check(r == 0 && !found && h->reusable(), "original tuple is not a reply tuple");

  ct::DumpResult d;
  uint8_t ours[16], elsewhere[16];
  ct::parseAddr(family, local, ours);
  ct::parseAddr(family, family == 4 ? "203.0.113.10" : "2001:db8:f::10", elsewhere);
  std::vector<ct::Cidr> cidrs(1);
  cidrs[0].family = family;
  ct::parseAddr(family, proxy, cidrs[0].addr);
  cidrs[0].prefix = family == 4 ? 24 : 64;
  r = h->dumpByReplyPorts(family, ours, 80, 20042, cidrs, 4, &d);
  check(r == 0 && d.total == 1 && d.matches.size() == 1 && d.matches[0].orig.sport == 1042,
        "filtered dump finds one");
  check(d.kernelFiltered, "kernel applied CTA_FILTER");
  r = h->dumpByReplyPorts(family, elsewhere, 80, 20042, cidrs, 4, &d);
  check(r == 0 && d.total == 0, "filtered dump: reply destination not ours");
  r = h->dumpByReplyPorts(family, ours, 80, 7, cidrs, 4, &d);
  check(r == 0 && d.total == 0, "filtered dump finds none");
  ct::parseAddr(family, family == 4 ? "192.0.2.0" : "2001:db8:9::", cidrs[0].addr);
  r = h->dumpByReplyPorts(family, ours, 80, 20042, cidrs, 4, &d);
  check(r == 0 && d.total == 0, "filtered dump: reply source not a proxy");
  r = h->dumpByReplyPorts(family, ours, 80, 20042, {}, 0, &d);
  check(r == 0 && d.total == 1 && d.matches.empty(), "dump limit 0 still counts");
  check(h->reusable(), "handle reusable after dumps");
}

// Port ids of this network namespace's NETLINK_NETFILTER sockets other than
// the kernel's and `except` (/proc/net/netlink, as anyone may read it).
std::vector<uint32_t> netfilterPortIds(uint32_t except) {
  std::vector<uint32_t> out;
  FILE* f = std::fopen("/proc/net/netlink", "r");
  if (f == nullptr) return out;
  char line[512];
  if (std::fgets(line, sizeof line, f) != nullptr) {  // header
    while (std::fgets(line, sizeof line, f) != nullptr) {
      char sk[64];
      int eth;
      unsigned long pid;
      if (std::sscanf(line, "%63s %d %lu", sk, &eth, &pid) == 3 && eth == NETLINK_NETFILTER &&
          pid != 0 && pid != except)
        out.push_back(static_cast<uint32_t>(pid));
    }
  }
  std::fclose(f);
  return out;
}

void putTuple(nlmsghdr* nlh, uint16_t type, const char* src, const char* dst, uint16_t sport,
              uint16_t dport) {
  uint8_t a[16];
  nlattr* tuple = mnl_attr_nest_start(nlh, type);
  nlattr* ip = mnl_attr_nest_start(nlh, CTA_TUPLE_IP);
  ct::parseAddr(4, src, a);
  mnl_attr_put(nlh, CTA_IP_V4_SRC, 4, a);
  ct::parseAddr(4, dst, a);
  mnl_attr_put(nlh, CTA_IP_V4_DST, 4, a);
  mnl_attr_nest_end(nlh, ip);
  nlattr* proto = mnl_attr_nest_start(nlh, CTA_TUPLE_PROTO);
  mnl_attr_put_u8(nlh, CTA_PROTO_NUM, IPPROTO_TCP);
  mnl_attr_put_u16(nlh, CTA_PROTO_SRC_PORT, htons(sport));
  mnl_attr_put_u16(nlh, CTA_PROTO_DST_PORT, htons(dport));
  mnl_attr_nest_end(nlh, proto);
  mnl_attr_nest_end(nlh, tuple);
}

// Another netlink socket sends the handle a datagram made to look like the
// kernel's answer to its next GET. That needs CAP_NET_ADMIN, the port id
// (in /proc/net/netlink) and the sequence number (seeded from the clock):
// all within reach. The handle must take answers from the kernel only.
void testForgedReply(bool claimKernelPid) {
  const char* what = claimKernelPid ? "forged reply (nlmsg_pid 0) ignored"
                                    : "forged reply (nlmsg_pid ours) ignored";
  mnl_socket* inj = mnl_socket_open(NETLINK_NETFILTER);
  if (inj == nullptr || mnl_socket_bind(inj, 0, MNL_SOCKET_AUTOPID) < 0) {
    check(false, "open the forging socket");
    if (inj != nullptr) mnl_socket_close(inj);
    return;
  }
  // Handle::open seeds the sequence number with time(): open it within one second.
  std::unique_ptr<ct::Handle> h;
  time_t before, after;
  int r;
  do {
    h.reset();
    before = time(nullptr);
    r = ct::Handle::open(&h);
    after = time(nullptr);
  } while (r == 0 && before != after);
  std::vector<uint32_t> ports = netfilterPortIds(mnl_socket_get_portid(inj));
  check(r == 0 && ports.size() == 1, "find the handle's port id");
  if (r != 0 || ports.size() != 1) {
    mnl_socket_close(inj);
    return;
  }
  // No connection has this reply tuple; the forgery claims one from 10.66.6.6.
  ct::Tuple key = tuple(4, "198.51.100.66", "203.0.113.66", 80, 60666);
  alignas(nlmsghdr) uint8_t buf[512] = {};
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;
  nlh->nlmsg_seq = static_cast<uint32_t>(before) + 1;  // the handle's first request
  nlh->nlmsg_pid = claimKernelPid ? 0 : ports[0];
  auto* nfg = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
  nfg->nfgen_family = AF_INET;
  nfg->version = NFNETLINK_V0;
  putTuple(nlh, CTA_TUPLE_ORIG, "10.66.6.6", "198.51.100.66", 40666, 80);
  putTuple(nlh, CTA_TUPLE_REPLY, "198.51.100.66", "203.0.113.66", 80, 60666);
  sockaddr_nl to = {};
  to.nl_family = AF_NETLINK;
  to.nl_pid = ports[0];
  ssize_t sent = sendto(mnl_socket_get_fd(inj), buf, nlh->nlmsg_len, 0,
                        reinterpret_cast<sockaddr*>(&to), sizeof to);
  check(sent == static_cast<ssize_t>(nlh->nlmsg_len), "send the forged reply");
  ct::Entry e;
  bool found = false;
  r = h->get(4, key, &e, &found);
  check(r == 0 && !found, what);
  if (found) std::printf("  (answered with the forged entry from %s)\n", ct::formatAddr(4, e.orig.src).c_str());
  if (r != 0) std::printf("  (get failed: %s)\n", std::strerror(-r));
  check(h->reusable(), "handle reusable after a forged reply");
  r = h->get(4, key, &e, &found);
  check(r == 0 && !found, "next GET after a forged reply");
  mnl_socket_close(inj);
}

void testPoolAndLane() {
  auto pool = std::make_shared<ct::Pool>();
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; t++)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; i++) {
        ct::Lease lease(*pool);
        if (lease.error() != 0) return;
        ct::Entry e;
        bool found;
        int r = lease.handle().get(
            4, tuple(4, "198.51.100.7", "203.0.113.9", 80, 20000 + (i + t) % 500), &e, &found);
        if (r == 0 && found) ok++;
      }
    });
  for (auto& th : threads) th.join();
  check(ok == 1200, "concurrent lookups through the pool");

  struct Job : ct::Lane::Job {
    std::shared_ptr<ct::Pool> pool;
    std::mutex* mu;
    std::condition_variable* cv;
    int* done;
    int* hits;
    uint16_t port;
    void run() override {
      {
        ct::Lease lease(*pool);
        ct::Entry e;
        bool found = false;
        if (lease.error() == 0)
          lease.handle().get(4, tuple(4, "198.51.100.7", "203.0.113.9", 80, port), &e, &found);
        std::lock_guard<std::mutex> lock(*mu);
        *hits += found;
        (*done)++;
      }
      cv->notify_all();
      delete this;
    }
  };
  std::mutex mu;
  std::condition_variable cv;
  int done = 0, hits = 0;
  {
    ct::Lane lane(50);
    for (int i = 0; i < 300; i++) {
      auto* job = new Job();
      job->pool = pool;
      job->mu = &mu;
      job->cv = &cv;
      job->done = &done;
      job->hits = &hits;
      job->port = 20000 + i;
      if (!lane.submit(job)) delete job;
    }
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done == 300; });
  }  // ~Lane joins
  check(hits == 300, "lane runs every job");

  // Jobs queued when the lane stops still run (against a closed pool).
  done = hits = 0;
  {
    ct::Lane lane(0);
    for (int i = 0; i < 50; i++) {
      auto* job = new Job();
      job->pool = pool;
      job->mu = &mu;
      job->cv = &cv;
      job->done = &done;
      job->hits = &hits;
      job->port = 20000 + i;
      if (!lane.submit(job)) delete job;
    }
    pool->close();
    lane.stop();
    auto* late = new Job();
    check(!lane.submit(late), "submit after stop refused");
    delete late;
  }
  check(done == 50, "queued jobs drained on stop");
  ct::Lease after(*pool);
  check(after.error() == -EBADF, "closed pool refuses with EBADF");
}

}  // namespace

int main() {
  testAddresses();
  testNetlink(4);
  testNetlink(6);
  testForgedReply(true);
  testForgedReply(false);
  testPoolAndLane();
  std::printf("selftest: %d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
