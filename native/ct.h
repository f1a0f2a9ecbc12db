// Netlink conntrack queries for docker-identd, free of any Node-API code so
// that the native self-test (native/test/selftest.cc) can run it under
// valgrind.
//
// Every function returns 0 or a negative errno value; nothing throws except
// std::bad_alloc from the standard containers.
#ifndef DOCKER_IDENTD_CT_H_
#define DOCKER_IDENTD_CT_H_

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

struct mnl_socket;
struct nlmsghdr;

namespace ct {

// One direction of a connection. Addresses are in network byte order, only
// the first 4 bytes are used for IPv4; ports are in host byte order.
struct Tuple {
  uint8_t src[16] = {};
  uint8_t dst[16] = {};
  uint16_t sport = 0;
  uint16_t dport = 0;
};

struct Entry {
  int family = 0;  // 4 or 6
  uint8_t l4proto = 0;
  Tuple orig;
  Tuple reply;
  int tcpState = -1;  // -1: not reported
  bool hasStatus = false;
  uint32_t status = 0;
  uint16_t zone = 0;  // of the reply direction; 0 also when the kernel does not say
  bool hasMark = false;
  uint32_t mark = 0;
  bool hasStart = false;
  uint64_t startNs = 0;  // CLOCK_REALTIME nanoseconds
};

struct Cidr {
  int family = 0;
  uint8_t addr[16] = {};
  unsigned prefix = 0;
};

// Result of a dump filtered on the reply ports.
struct DumpResult {
  size_t total = 0;             // matching entries seen
  std::vector<Entry> matches;   // at most `limit` of them
  bool kernelFiltered = false;  // the kernel applied CTA_FILTER
};

// Address helpers. `family` is 4 or 6.
size_t addrLen(int family);
bool parseAddr(int family, const char* text, uint8_t out[16]);
// Canonical text: dotted quad, or RFC 5952 (IPv4-mapped IPv6 becomes the
// dotted quad, like canonicalIp in src/lib/ip.ts).
std::string formatAddr(int family, const uint8_t* addr);
bool cidrContains(const Cidr& cidr, int family, const uint8_t* addr);

const char* protoName(uint8_t l4proto);
const char* tcpStateName(int state);  // nullptr when unknown
// IPS_* bit names, plus "UNREPLIED" when SEEN_REPLY is not set.
std::vector<const char*> statusNames(uint32_t status);

// One netlink socket: one request at a time.
class Handle {
 public:
  static int open(std::unique_ptr<Handle>* out);
  ~Handle();
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;

  // Exact lookup: IPCTNL_MSG_CT_GET keyed by the reply tuple (TCP), in zone
  // 0. Sets *found only when the returned entry's reply tuple equals `reply`
  // and its reply direction is in zone 0.
  int get(int family, const Tuple& reply, Entry* out, bool* found);

  // Dump of TCP entries whose reply ports are (sport, dport), whose reply
  // destination is `replyDst` (our address, where the query came to) and
  // whose reply source lies in one of `cidrs`, in every zone: ports filtered
  // by the kernel (CTA_FILTER) where supported, everything checked here.
  int dumpByReplyPorts(int family, const uint8_t replyDst[16], uint16_t sport, uint16_t dport,
                       const std::vector<Cidr>& cidrs, size_t limit, DumpResult* out);

  // Bulk insert of ESTABLISHED TCP entries (benchmarks and tests). `records`
  // holds `count` records of orig src, orig dst, reply src, reply dst
  // (addrLen bytes each) then orig sport, orig dport, reply sport, reply dport
  // (big-endian u16). Stops at the first error other than EEXIST.
  int insert(int family, const uint8_t* records, size_t count, uint32_t timeoutSec,
             size_t* inserted, size_t* existed);

  // False after a request that did not run to its end (timeout, interrupted
  // dump, unexpected message): the socket may hold stale data.
  bool reusable() const { return clean_; }

 private:
  Handle() = default;
  int send(const void* buf, size_t len);
  int recv(ssize_t* len);
  int dumpOnce(int family, const uint8_t replyDst[16], uint16_t sport, uint16_t dport,
               const std::vector<Cidr>& cidrs, size_t limit, bool useFilter, DumpResult* out);

  mnl_socket* nl_ = nullptr;
  uint32_t portid_ = 0;
  uint32_t seq_ = 0;
  bool clean_ = true;
  std::unique_ptr<uint8_t[]> buf_;
};

// A small pool of handles shared by concurrent requests. close() frees the
// idle handles; handles in use are freed when they are released.
class Pool {
 public:
  static constexpr size_t kMaxIdle = 4;
  int acquire(std::unique_ptr<Handle>* out);
  void release(std::unique_ptr<Handle> h);
  void close();
  bool closed();
  ~Pool() { close(); }

 private:
  std::mutex mu_;
  std::vector<std::unique_ptr<Handle>> idle_;
  bool closed_ = false;
};

// Borrows a handle from a pool for one scope.
class Lease {
 public:
  explicit Lease(Pool& pool) : pool_(pool) { err_ = pool_.acquire(&h_); }
  ~Lease() {
    if (h_) pool_.release(std::move(h_));
  }
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  int error() const { return err_; }
  Handle& handle() { return *h_; }

 private:
  Pool& pool_;
  std::unique_ptr<Handle> h_;
  int err_ = 0;
};

// A dedicated thread for short requests (exact GETs), run in order. After a
// request it polls for the next one for up to `spinMicros` before it sleeps:
// back-to-back lookups then skip the thread wake-up, which costs tens of
// microseconds on virtual machines, several times the GET itself.
class Lane {
 public:
  struct Job {
    virtual ~Job() = default;
    // Runs on the lane thread and takes over the job's ownership.
    virtual void run() = 0;
  };

  explicit Lane(unsigned spinMicros) : spinMicros_(spinMicros) {}
  ~Lane() { stop(); }
  Lane(const Lane&) = delete;
  Lane& operator=(const Lane&) = delete;

  // Takes ownership; false (job untouched) after stop() or when no thread
  // can be started.
  bool submit(Job* job);
  // Runs what is queued, then ends and joins the thread. Idempotent.
  void stop();

 private:
  void loop();

  const unsigned spinMicros_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job*> queue_;
  std::atomic<size_t> queued_{0};
  std::atomic<bool> stopping_{false};
  bool stopped_ = false;
  std::thread thread_;
};

}  // namespace ct

#endif  // DOCKER_IDENTD_CT_H_
