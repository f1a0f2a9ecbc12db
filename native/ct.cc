// Netlink conntrack queries: requests built with libmnl, replies parsed with
// libnetfilter_conntrack. See ct.h.
#include "ct.h"

#include <arpa/inet.h>
#include <errno.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack_tcp.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <time.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <system_error>

#ifndef NLM_F_DUMP_FILTERED
#define NLM_F_DUMP_FILTERED 0x20
#endif
#ifndef NETLINK_CAP_ACK
#define NETLINK_CAP_ACK 10
#endif

namespace ct {
namespace {

// Kernel-internal CTA_FILTER flag bits (net/netfilter/nf_internals.h).
constexpr uint32_t kFilterProtoNum = 1u << 3;
constexpr uint32_t kFilterProtoSrcPort = 1u << 4;
constexpr uint32_t kFilterProtoDstPort = 1u << 5;

constexpr size_t kRecvBufSize = 32768;  // one dump chunk; larger is truncated
constexpr size_t kReqBufSize = 512;     // any single request we build
constexpr size_t kBatchMsgs = 128;      // inserts per sendmsg: acks fit rcvbuf
constexpr int kRecvTimeoutSec = 5;      // no request waits longer per message

uint8_t nfFamily(int family) { return family == 6 ? AF_INET6 : AF_INET; }

nlmsghdr* putRequest(void* buf, uint8_t msgType, uint16_t flags, uint32_t seq, int family) {
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | msgType;
  nlh->nlmsg_flags = flags;
  nlh->nlmsg_seq = seq;
  auto* nfg = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
  nfg->nfgen_family = nfFamily(family);
  nfg->version = NFNETLINK_V0;
  nfg->res_id = 0;
  return nlh;
}

// CTA_TUPLE_{ORIG,REPLY} { CTA_TUPLE_IP {src, dst}, CTA_TUPLE_PROTO {tcp,
// sport, dport} }. Sizes are fixed and far below kReqBufSize.
void putTuple(nlmsghdr* nlh, uint16_t type, int family, const Tuple& t) {
  nlattr* tuple = mnl_attr_nest_start(nlh, type);
  nlattr* ip = mnl_attr_nest_start(nlh, CTA_TUPLE_IP);
  if (family == 4) {
    mnl_attr_put(nlh, CTA_IP_V4_SRC, 4, t.src);
    mnl_attr_put(nlh, CTA_IP_V4_DST, 4, t.dst);
  } else {
    mnl_attr_put(nlh, CTA_IP_V6_SRC, 16, t.src);
    mnl_attr_put(nlh, CTA_IP_V6_DST, 16, t.dst);
  }
  mnl_attr_nest_end(nlh, ip);
  nlattr* proto = mnl_attr_nest_start(nlh, CTA_TUPLE_PROTO);
  mnl_attr_put_u8(nlh, CTA_PROTO_NUM, IPPROTO_TCP);
  mnl_attr_put_u16(nlh, CTA_PROTO_SRC_PORT, htons(t.sport));
  mnl_attr_put_u16(nlh, CTA_PROTO_DST_PORT, htons(t.dport));
  mnl_attr_nest_end(nlh, proto);
  mnl_attr_nest_end(nlh, tuple);
}

struct NfctDeleter {
  void operator()(nf_conntrack* c) const { nfct_destroy(c); }
};
using NfctPtr = std::unique_ptr<nf_conntrack, NfctDeleter>;

bool copyAttr(const nf_conntrack* c, int attr, void* dst, size_t len) {
  const void* p = nfct_get_attr(c, static_cast<nf_conntrack_attr>(attr));
  if (p == nullptr) return false;
  std::memcpy(dst, p, len);
  return true;
}

// Fills `e` from a conntrack message; -EPROTO when a tuple part is missing.
int parseEntry(const nlmsghdr* nlh, Entry* e) {
  NfctPtr c(nfct_new());
  if (!c) return -ENOMEM;
  if (nfct_nlmsg_parse(nlh, c.get()) < 0) return -EPROTO;
  uint8_t l3 = nfct_get_attr_u8(c.get(), ATTR_L3PROTO);
  if (l3 != AF_INET && l3 != AF_INET6) return -EPROTO;
  *e = Entry();
  e->family = l3 == AF_INET ? 4 : 6;
  e->l4proto = nfct_get_attr_u8(c.get(), ATTR_L4PROTO);
  bool ok;
  if (e->family == 4) {
    ok = copyAttr(c.get(), ATTR_ORIG_IPV4_SRC, e->orig.src, 4) &&
         copyAttr(c.get(), ATTR_ORIG_IPV4_DST, e->orig.dst, 4) &&
         copyAttr(c.get(), ATTR_REPL_IPV4_SRC, e->reply.src, 4) &&
         copyAttr(c.get(), ATTR_REPL_IPV4_DST, e->reply.dst, 4);
  } else {
    ok = copyAttr(c.get(), ATTR_ORIG_IPV6_SRC, e->orig.src, 16) &&
         copyAttr(c.get(), ATTR_ORIG_IPV6_DST, e->orig.dst, 16) &&
         copyAttr(c.get(), ATTR_REPL_IPV6_SRC, e->reply.src, 16) &&
         copyAttr(c.get(), ATTR_REPL_IPV6_DST, e->reply.dst, 16);
  }
  if (!ok) return -EPROTO;
  // Ports are absent for port-less protocols; they stay 0.
  auto port = [&](int attr) -> uint16_t {
    auto a = static_cast<nf_conntrack_attr>(attr);
    return nfct_attr_is_set(c.get(), a) > 0 ? ntohs(nfct_get_attr_u16(c.get(), a)) : 0;
  };
  e->orig.sport = port(ATTR_ORIG_PORT_SRC);
  e->orig.dport = port(ATTR_ORIG_PORT_DST);
  e->reply.sport = port(ATTR_REPL_PORT_SRC);
  e->reply.dport = port(ATTR_REPL_PORT_DST);
  if (e->l4proto == IPPROTO_TCP && nfct_attr_is_set(c.get(), ATTR_TCP_STATE) > 0)
    e->tcpState = nfct_get_attr_u8(c.get(), ATTR_TCP_STATE);
  if ((e->hasStatus = nfct_attr_is_set(c.get(), ATTR_STATUS) > 0))
    e->status = nfct_get_attr_u32(c.get(), ATTR_STATUS);
  // The zone of the reply direction. The kernel leaves CTA_ZONE out for zone
  // 0 and for a zone set per direction, which it reports inside that
  // direction's tuple (CTA_TUPLE_ZONE): a zone for the original direction
  // only leaves the reply direction in zone 0.
  if (nfct_attr_is_set(c.get(), ATTR_ZONE) > 0)
    e->zone = nfct_get_attr_u16(c.get(), ATTR_ZONE);
  else if (nfct_attr_is_set(c.get(), ATTR_REPL_ZONE) > 0)
    e->zone = nfct_get_attr_u16(c.get(), ATTR_REPL_ZONE);
  else
    e->zone = 0;
  if ((e->hasMark = nfct_attr_is_set(c.get(), ATTR_MARK) > 0))
    e->mark = nfct_get_attr_u32(c.get(), ATTR_MARK);
  if ((e->hasStart = nfct_attr_is_set(c.get(), ATTR_TIMESTAMP_START) > 0))
    e->startNs = nfct_get_attr_u64(c.get(), ATTR_TIMESTAMP_START);
  return 0;
}

bool sameTuple(int family, const Tuple& a, const Tuple& b) {
  size_t n = addrLen(family);
  return a.sport == b.sport && a.dport == b.dport && std::memcmp(a.src, b.src, n) == 0 &&
         std::memcmp(a.dst, b.dst, n) == 0;
}

bool isConntrackMsg(const nlmsghdr* nlh) {
  return (nlh->nlmsg_type >> 8) == NFNL_SUBSYS_CTNETLINK &&
         (nlh->nlmsg_type & 0xff) == IPCTNL_MSG_CT_NEW;
}

}  // namespace

// ---------------------------------------------------------------- addresses

size_t addrLen(int family) { return family == 6 ? 16 : 4; }

bool parseAddr(int family, const char* text, uint8_t out[16]) {
  std::memset(out, 0, 16);
  if (family == 4) return inet_pton(AF_INET, text, out) == 1;
  if (family == 6) return inet_pton(AF_INET6, text, out) == 1;
  return false;
}

std::string formatAddr(int family, const uint8_t* a) {
  char text[48];
  bool mapped = family == 6 && a[10] == 0xff && a[11] == 0xff;
  for (int i = 0; mapped && i < 10; i++) mapped = a[i] == 0;
  if (family == 4 || mapped) {
    const uint8_t* v4 = mapped ? a + 12 : a;
    std::snprintf(text, sizeof text, "%u.%u.%u.%u", v4[0], v4[1], v4[2], v4[3]);
    return text;
  }
  unsigned groups[8];
  for (int i = 0; i < 8; i++) groups[i] = (a[2 * i] << 8) | a[2 * i + 1];
  int bestStart = -1, bestLen = 0;
  for (int i = 0; i < 8;) {
    if (groups[i] != 0) {
      i++;
      continue;
    }
    int j = i;
    while (j < 8 && groups[j] == 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (bestLen < 2) bestStart = -1;
  std::string out;
  for (int i = 0; i < 8; i++) {
    if (i == bestStart) {
      out += "::";
      i += bestLen - 1;
      continue;
    }
    if (!out.empty() && out.back() != ':') out += ':';
    std::snprintf(text, sizeof text, "%x", groups[i]);
    out += text;
  }
  return out;
}

bool cidrContains(const Cidr& cidr, int family, const uint8_t* addr) {
  if (cidr.family != family) return false;
  unsigned bits = cidr.prefix;
  if (bits > addrLen(family) * 8) return false;
  size_t whole = bits / 8;
  if (std::memcmp(cidr.addr, addr, whole) != 0) return false;
  unsigned rest = bits % 8;
  if (rest == 0) return true;
  uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (cidr.addr[whole] & mask) == (addr[whole] & mask);
}

// ------------------------------------------------------------------- names

const char* protoName(uint8_t p) {
  switch (p) {
    case IPPROTO_ICMP:
      return "icmp";
    case IPPROTO_TCP:
      return "tcp";
    case IPPROTO_UDP:
      return "udp";
    case IPPROTO_DCCP:
      return "dccp";
    case IPPROTO_GRE:
      return "gre";
    case IPPROTO_ICMPV6:
      return "icmpv6";
    case IPPROTO_SCTP:
      return "sctp";
    case IPPROTO_UDPLITE:
      return "udplite";
    default:
      return "unknown";
  }
}

const char* tcpStateName(int s) {
  // Names as /proc/net/nf_conntrack prints them (tcp_conntrack_names).
  static const char* const kNames[] = {"NONE",     "SYN_SENT",   "SYN_RECV", "ESTABLISHED",
                                       "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT",
                                       "CLOSE",    "SYN_SENT2"};
  if (s < 0 || s >= static_cast<int>(sizeof kNames / sizeof kNames[0])) return nullptr;
  return kNames[s];
}

std::vector<const char*> statusNames(uint32_t status) {
  static const char* const kBits[] = {"EXPECTED",     "SEEN_REPLY", "ASSURED",       "CONFIRMED",
                                      "SRC_NAT",      "DST_NAT",    "SEQ_ADJUST",    "SRC_NAT_DONE",
                                      "DST_NAT_DONE", "DYING",      "FIXED_TIMEOUT", "TEMPLATE",
                                      "NAT_CLASH",    "HELPER",     "OFFLOAD",       "HW_OFFLOAD"};
  std::vector<const char*> out;
  for (unsigned i = 0; i < sizeof kBits / sizeof kBits[0]; i++)
    if (status & (1u << i)) out.push_back(kBits[i]);
  if (!(status & IPS_SEEN_REPLY)) out.push_back("UNREPLIED");
  return out;
}

// ------------------------------------------------------------------ Handle

int Handle::open(std::unique_ptr<Handle>* out) {
  std::unique_ptr<Handle> h(new Handle());
  h->buf_.reset(new uint8_t[kRecvBufSize]);
  h->nl_ = mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC);
  if (h->nl_ == nullptr) return -errno;
  if (mnl_socket_bind(h->nl_, 0, MNL_SOCKET_AUTOPID) < 0) return -errno;
  h->portid_ = mnl_socket_get_portid(h->nl_);
  int on = 1;
  // Short acks (no copy of the request); best effort.
  mnl_socket_setsockopt(h->nl_, NETLINK_CAP_ACK, &on, sizeof on);
  timeval tv = {kRecvTimeoutSec, 0};
  if (setsockopt(mnl_socket_get_fd(h->nl_), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0)
    return -errno;
  h->seq_ = static_cast<uint32_t>(time(nullptr));
  *out = std::move(h);
  return 0;
}

Handle::~Handle() {
  if (nl_ != nullptr) mnl_socket_close(nl_);
}

int Handle::send(const void* buf, size_t len) {
  for (;;) {
    ssize_t n = mnl_socket_sendto(nl_, buf, len);
    if (n >= 0) return 0;
    if (errno != EINTR) return -errno;
  }
}

int Handle::recv(ssize_t* len) {
  for (;;) {
    sockaddr_nl from = {};
    iovec iov = {buf_.get(), kRecvBufSize};
    msghdr msg = {};
    msg.msg_name = &from;
    msg.msg_namelen = sizeof from;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    ssize_t n = recvmsg(mnl_socket_get_fd(nl_), &msg, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return -ETIMEDOUT;
      return -errno;
    }
    // Only the kernel (port id 0) answers our requests. Any socket with
    // CAP_NET_ADMIN in the namespace may send us a datagram, made to look
    // like the answer (our port id is in /proc/net/netlink): drop it unread
    // and wait on for the kernel's.
    if (msg.msg_namelen != sizeof from || from.nl_family != AF_NETLINK || from.nl_pid != 0)
      continue;
    // A message larger than the buffer.
    if (msg.msg_flags & MSG_TRUNC) return -EMSGSIZE;
    *len = n;
    return 0;
  }
}

namespace {

// Walks the messages of one datagram. `onData` is called for conntrack
// messages; returns 1 when the request is complete, 0 to read on, <0 errno.
template <typename F>
int walk(const uint8_t* buf, ssize_t n, uint32_t portid, uint32_t seq, int* kernelErr, F onData) {
  int len = static_cast<int>(n);
  for (auto* nlh = reinterpret_cast<const nlmsghdr*>(buf); mnl_nlmsg_ok(nlh, len);
       nlh = mnl_nlmsg_next(nlh, &len)) {
    // The kernel addresses every answer to a request of ours to our port id.
    if (nlh->nlmsg_pid != portid || nlh->nlmsg_seq != seq)
      return -EPROTO;  // not ours: stale data on the socket
    if (nlh->nlmsg_flags & NLM_F_DUMP_INTR) return -EINTR;
    switch (nlh->nlmsg_type) {
      case NLMSG_NOOP:
        continue;
      case NLMSG_OVERRUN:
        return -ENOBUFS;
      case NLMSG_ERROR: {
        if (mnl_nlmsg_get_payload_len(nlh) < sizeof(nlmsgerr)) return -EPROTO;
        auto* err = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(nlh));
        *kernelErr = err->error;
        return 1;
      }
      case NLMSG_DONE: {
        // Newer kernels put a dump's error code after NLMSG_DONE.
        if (mnl_nlmsg_get_payload_len(nlh) >= sizeof(int)) {
          int e;
          std::memcpy(&e, mnl_nlmsg_get_payload(nlh), sizeof e);
          *kernelErr = e < 0 ? e : 0;
        }
        return 1;
      }
      default:
        if (!isConntrackMsg(nlh)) return -EPROTO;
        int r = onData(nlh);
        if (r != 0) return r;
    }
  }
  return 0;
}

}  // namespace

int Handle::get(int family, const Tuple& reply, Entry* out, bool* found) {
  *found = false;
  alignas(nlmsghdr) uint8_t req[kReqBufSize] = {};  // zeroed: attribute padding
  uint32_t seq = ++seq_;
  nlmsghdr* nlh = putRequest(req, IPCTNL_MSG_CT_GET, NLM_F_REQUEST, seq, family);
  // The kernel hashes both directions of every entry, so keying the GET by
  // the reply tuple finds the entry whose reply OR original tuple is this one.
  putTuple(nlh, CTA_TUPLE_REPLY, family, reply);
  clean_ = false;
  int r = send(req, nlh->nlmsg_len);
  if (r < 0) return r;
  Entry e;
  bool got = false;
  int kernelErr = 0;
  while (!got) {
    ssize_t n;
    if ((r = recv(&n)) < 0) return r;
    r = walk(buf_.get(), n, portid_, seq, &kernelErr, [&](const nlmsghdr* m) -> int {
      int pr = parseEntry(m, &e);
      if (pr < 0) return pr;
      got = true;
      return 1;  // a GET answers with exactly one message
    });
    if (r < 0) return r;
    if (r == 1 && !got) {
      clean_ = true;
      if (kernelErr == -ENOENT) return 0;
      return kernelErr < 0 ? kernelErr : -EPROTO;
    }
  }
  clean_ = true;
  // The entry found may be the one whose ORIGINAL tuple equals the key: a
  // different connection. Only an equal reply tuple answers. (The table never
  // holds two entries sharing a tuple in either direction, so no other entry
  // can have this reply tuple in this zone.) The GET searches zone 0 (no
  // CTA_ZONE in the request); an entry reporting another zone is refused all
  // the same.
  if (e.family == family && e.l4proto == IPPROTO_TCP && e.zone == 0 &&
      sameTuple(family, e.reply, reply)) {
    *out = e;
    *found = true;
  }
  return 0;
}

int Handle::dumpOnce(int family, const uint8_t replyDst[16], uint16_t sport, uint16_t dport,
                     const std::vector<Cidr>& cidrs, size_t limit, bool useFilter,
                     DumpResult* out) {
  *out = DumpResult();
  alignas(nlmsghdr) uint8_t req[kReqBufSize] = {};  // zeroed: attribute padding
  uint32_t seq = ++seq_;
  nlmsghdr* nlh = putRequest(req, IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, family);
  if (useFilter) {
    // Kernels >= 5.8: match reply protocol and ports in the kernel. Older
    // kernels ignore the unknown attribute and dump the whole family.
    nlattr* tuple = mnl_attr_nest_start(nlh, CTA_TUPLE_REPLY);
    nlattr* proto = mnl_attr_nest_start(nlh, CTA_TUPLE_PROTO);
    mnl_attr_put_u8(nlh, CTA_PROTO_NUM, IPPROTO_TCP);
    mnl_attr_put_u16(nlh, CTA_PROTO_SRC_PORT, htons(sport));
    mnl_attr_put_u16(nlh, CTA_PROTO_DST_PORT, htons(dport));
    mnl_attr_nest_end(nlh, proto);
    mnl_attr_nest_end(nlh, tuple);
    nlattr* filter = mnl_attr_nest_start(nlh, CTA_FILTER);
    mnl_attr_put_u32(nlh, CTA_FILTER_REPLY_FLAGS,
                     kFilterProtoNum | kFilterProtoSrcPort | kFilterProtoDstPort);
    mnl_attr_nest_end(nlh, filter);
  }
  clean_ = false;
  int r = send(req, nlh->nlmsg_len);
  if (r < 0) return r;
  int kernelErr = 0;
  for (;;) {
    ssize_t n;
    if ((r = recv(&n)) < 0) return r;
    r = walk(buf_.get(), n, portid_, seq, &kernelErr, [&](const nlmsghdr* m) -> int {
      if (m->nlmsg_flags & NLM_F_DUMP_FILTERED) out->kernelFiltered = true;
      Entry e;
      int pr = parseEntry(m, &e);
      if (pr < 0) return pr;
      // Both ports and our own address: a connection to another address of
      // this host is not the one a query to this address is about.
      if (e.family != family || e.l4proto != IPPROTO_TCP || e.reply.sport != sport ||
          e.reply.dport != dport || std::memcmp(e.reply.dst, replyDst, addrLen(family)) != 0)
        return 0;
      bool inSet = cidrs.empty();
      for (const Cidr& c : cidrs)
        if (cidrContains(c, family, e.reply.src)) inSet = true;
      if (!inSet) return 0;
      out->total++;
      if (out->matches.size() < limit) out->matches.push_back(e);
      return 0;
    });
    if (r < 0) return r;
    if (r == 1) break;
  }
  clean_ = true;
  return kernelErr;
}

int Handle::dumpByReplyPorts(int family, const uint8_t replyDst[16], uint16_t sport, uint16_t dport,
                             const std::vector<Cidr>& cidrs, size_t limit, DumpResult* out) {
  int r = dumpOnce(family, replyDst, sport, dport, cidrs, limit, true, out);
  // A kernel that knows CTA_FILTER but rejects this one: filter here only.
  if (r == -EINVAL || r == -EOPNOTSUPP)
    r = dumpOnce(family, replyDst, sport, dport, cidrs, limit, false, out);
  // A hash resize interrupted the dump: the rest of it is still queued on
  // this socket, so the retry needs a fresh one.
  if (r == -EINTR) {
    std::unique_ptr<Handle> fresh;
    if (open(&fresh) == 0) {
      std::swap(nl_, fresh->nl_);
      std::swap(portid_, fresh->portid_);
      clean_ = true;
      r = dumpOnce(family, replyDst, sport, dport, cidrs, limit, true, out);
    }
  }
  return r;
}

int Handle::insert(int family, const uint8_t* records, size_t count, uint32_t timeoutSec,
                   size_t* inserted, size_t* existed) {
  *inserted = 0;
  *existed = 0;
  const size_t alen = addrLen(family);
  const size_t recLen = 4 * alen + 8;
  constexpr size_t kBatchBytes = kBatchMsgs * kReqBufSize;
  std::unique_ptr<uint8_t[]> batch(new uint8_t[kBatchBytes]);
  size_t i = 0;
  while (i < count) {
    size_t off = 0, n = 0;
    uint32_t firstSeq = seq_ + 1;
    std::memset(batch.get(), 0, kBatchBytes);  // attribute padding included
    for (; n < kBatchMsgs && i + n < count; n++) {
      const uint8_t* rec = records + (i + n) * recLen;
      Tuple o, rp;
      std::memcpy(o.src, rec, alen);
      std::memcpy(o.dst, rec + alen, alen);
      std::memcpy(rp.src, rec + 2 * alen, alen);
      std::memcpy(rp.dst, rec + 3 * alen, alen);
      const uint8_t* p = rec + 4 * alen;
      o.sport = (p[0] << 8) | p[1];
      o.dport = (p[2] << 8) | p[3];
      rp.sport = (p[4] << 8) | p[5];
      rp.dport = (p[6] << 8) | p[7];
      nlmsghdr* nlh =
          putRequest(batch.get() + off, IPCTNL_MSG_CT_NEW,
                     NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK, ++seq_, family);
      putTuple(nlh, CTA_TUPLE_ORIG, family, o);
      putTuple(nlh, CTA_TUPLE_REPLY, family, rp);
      nlattr* info = mnl_attr_nest_start(nlh, CTA_PROTOINFO);
      nlattr* tcp = mnl_attr_nest_start(nlh, CTA_PROTOINFO_TCP);
      mnl_attr_put_u8(nlh, CTA_PROTOINFO_TCP_STATE, TCP_CONNTRACK_ESTABLISHED);
      mnl_attr_nest_end(nlh, tcp);
      mnl_attr_nest_end(nlh, info);
      mnl_attr_put_u32(nlh, CTA_STATUS, htonl(IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED));
      mnl_attr_put_u32(nlh, CTA_TIMEOUT, htonl(timeoutSec));
      off += MNL_ALIGN(nlh->nlmsg_len);
    }
    clean_ = false;
    int r = send(batch.get(), off);
    if (r < 0) return r;
    // One ack per message, each in its own datagram.
    int firstErr = 0;
    for (size_t acked = 0; acked < n;) {
      ssize_t len;
      if ((r = recv(&len)) < 0) return r;
      int left = static_cast<int>(len);
      for (auto* nlh = reinterpret_cast<const nlmsghdr*>(buf_.get()); mnl_nlmsg_ok(nlh, left);
           nlh = mnl_nlmsg_next(nlh, &left)) {
        if (nlh->nlmsg_type != NLMSG_ERROR || nlh->nlmsg_pid != portid_ ||
            nlh->nlmsg_seq - firstSeq >= n || mnl_nlmsg_get_payload_len(nlh) < sizeof(nlmsgerr))
          return -EPROTO;
        int e = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(nlh))->error;
        acked++;
        if (e == 0)
          (*inserted)++;
        else if (e == -EEXIST)
          (*existed)++;
        else if (firstErr == 0)
          firstErr = e;
      }
    }
    clean_ = true;
    if (firstErr != 0) return firstErr;
    i += n;
  }
  return 0;
}

// -------------------------------------------------------------------- Pool

int Pool::acquire(std::unique_ptr<Handle>* out) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return -EBADF;
    if (!idle_.empty()) {
      *out = std::move(idle_.back());
      idle_.pop_back();
      return 0;
    }
  }
  return Handle::open(out);
}

void Pool::release(std::unique_ptr<Handle> h) {
  if (!h || !h->reusable()) return;  // a dirty socket is closed, not reused
  std::lock_guard<std::mutex> lock(mu_);
  if (!closed_ && idle_.size() < kMaxIdle) idle_.push_back(std::move(h));
}  // otherwise `h` is closed here, after the lock is released

void Pool::close() {
  std::vector<std::unique_ptr<Handle>> doomed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    doomed.swap(idle_);
  }
}

bool Pool::closed() {
  std::lock_guard<std::mutex> lock(mu_);
  return closed_;
}

// -------------------------------------------------------------------- Lane

bool Lane::submit(Job* job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_ || stopping_.load()) return false;
    if (!thread_.joinable()) {
      try {
        thread_ = std::thread(&Lane::loop, this);
      } catch (const std::system_error&) {
        return false;
      }
    }
    queue_.push_back(job);
    queued_.fetch_add(1, std::memory_order_release);
  }
  cv_.notify_one();  // no system call when the thread is spinning
  return true;
}

void Lane::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return;
    stopped_ = true;
    stopping_.store(true);
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

static inline void cpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

void Lane::loop() {
  for (;;) {
    auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(spinMicros_);
    while (queued_.load(std::memory_order_acquire) == 0 && !stopping_.load() &&
           std::chrono::steady_clock::now() < until)
      cpuRelax();
    Job* job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return !queue_.empty() || stopping_.load(); });
      if (queue_.empty()) return;  // stopping, and everything has run
      job = queue_.front();
      queue_.pop_front();
      queued_.fetch_sub(1, std::memory_order_relaxed);
    }
    job->run();
  }
}

}  // namespace ct
