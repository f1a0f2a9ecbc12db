// Node-API binding of the netlink conntrack queries (ct.h). getNow() makes an
// exact GET on the JavaScript thread (the kernel answers it within
// sendmsg(); the daemon's default); get() and the probe go to the object's
// Lane thread and come back through a thread-safe function; dumps and
// inserts run on the libuv thread pool (Napi::AsyncWorker). Both borrow netlink handles
// from the object's Pool. src/conntrack/netlink.ts turns the callbacks into
// promises.
//
//   new Conntrack({ spinMicros? })
//   .probe(cb)
//   .get(family, src, dst, sport, dport, cb)              cb(err, Entry | null)
//   .findByReplyPorts(family, replyDst, sport, dport, [[addr, prefix], ...], limit, cb)
//                                      cb(err, { total, matches, kernelFiltered })
//   .insert(family, records: Buffer, timeoutSec, cb)    cb(err, { inserted, existed })
//   .close()
//   formatAddress(family, Buffer): string                (tests)
//
// Callbacks rather than promises: a callback reference can be released when
// an environment (a worker thread) goes away with requests in flight, while
// an unsettled napi_deferred cannot be freed at all.
#include <napi.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "ct.h"
#include "errno_error.h"
#include "notify.h"

namespace {

constexpr int kAbiVersion = 2;  // 2: findByReplyPorts takes the reply destination
constexpr size_t kMaxMatches = 16;

constexpr unsigned kDefaultSpinMicros = 100;
constexpr unsigned kMaxSpinMicros = 10000;

// An Error shaped like Node's system errors: code, errno (negative), syscall.
Napi::Value ErrnoError(Napi::Env env, int err, const char* syscall) {
  return identd::ErrnoError(env, err, syscall).Value();
}

Napi::Object TupleObject(Napi::Env env, int family, const ct::Tuple& t) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("src", ct::formatAddr(family, t.src));
  o.Set("dst", ct::formatAddr(family, t.dst));
  o.Set("sport", t.sport);
  o.Set("dport", t.dport);
  return o;
}

Napi::Object EntryObject(Napi::Env env, const ct::Entry& e) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("family", e.family);
  o.Set("protocol", ct::protoName(e.l4proto));
  o.Set("orig", TupleObject(env, e.family, e.orig));
  o.Set("reply", TupleObject(env, e.family, e.reply));
  if (const char* state = ct::tcpStateName(e.tcpState)) o.Set("state", state);
  if (e.hasStatus) {
    std::vector<const char*> names = ct::statusNames(e.status);
    Napi::Array a = Napi::Array::New(env, names.size());
    for (uint32_t i = 0; i < names.size(); i++) a.Set(i, names[i]);
    o.Set("status", a);
  }
  o.Set("zone", e.zone);
  if (e.hasMark) o.Set("mark", e.mark);
  if (e.hasStart) o.Set("startNs", Napi::BigInt::New(env, e.startNs));
  return o;
}

int FamilyArg(const Napi::CallbackInfo& info, size_t i) {
  if (!info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), "family must be 4 or 6");
  int family = info[i].As<Napi::Number>().Int32Value();
  if (family != 4 && family != 6) throw Napi::TypeError::New(info.Env(), "family must be 4 or 6");
  return family;
}

uint16_t PortArg(const Napi::CallbackInfo& info, size_t i) {
  if (info[i].IsNumber()) {
    double d = info[i].As<Napi::Number>().DoubleValue();
    if (d >= 0 && d <= 65535 && d == static_cast<double>(static_cast<int>(d)))
      return static_cast<uint16_t>(d);
  }
  throw Napi::TypeError::New(info.Env(), "port must be an integer 0-65535");
}

void AddrArg(const Napi::CallbackInfo& info, size_t i, int family, uint8_t out[16]) {
  if (!info[i].IsString() ||
      !ct::parseAddr(family, info[i].As<Napi::String>().Utf8Value().c_str(), out))
    throw Napi::TypeError::New(info.Env(),
                               family == 4 ? "invalid IPv4 address" : "invalid IPv6 address");
}

Napi::Function CallbackArg(const Napi::CallbackInfo& info, size_t i) {
  if (!info[i].IsFunction()) throw Napi::TypeError::New(info.Env(), "callback must be a function");
  return info[i].As<Napi::Function>();
}

// Base of the thread-pool queries (dumps, inserts): borrows a handle, runs
// off the JS thread, calls back cb(err, result). Errors are negative errno
// values, never thrown.
class Worker : public Napi::AsyncWorker {
 public:
  Worker(const Napi::Function& cb, std::shared_ptr<ct::Pool> pool, const char* syscall)
      : Napi::AsyncWorker(cb, "docker-identd:conntrack"),
        pool_(std::move(pool)),
        syscall_(syscall) {}

  void Start() { Queue(); }  // deletes itself after calling back

 protected:
  virtual int Run(ct::Handle& handle) = 0;
  virtual Napi::Value Result(Napi::Env env) = 0;

  void Execute() override {
    try {
      ct::Lease lease(*pool_);
      err_ = lease.error();
      if (err_ == 0) err_ = Run(lease.handle());
    } catch (const std::bad_alloc&) {
      err_ = -ENOMEM;
    }
  }

  // Exceptions (also from the callback) become JS exceptions in AsyncWorker.
  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    if (err_ < 0)
      Callback().Call({ErrnoError(env, err_, syscall_)});
    else
      Callback().Call({env.Null(), Result(env)});
  }

 private:
  std::shared_ptr<ct::Pool> pool_;
  const char* syscall_;
  int err_ = 0;
};

class Conntrack;

// An exact GET (or the probe) on the Lane thread. Handed back to the
// JavaScript thread through the object's thread-safe function.
struct GetJob : ct::Lane::Job {
  GetJob(const Napi::Function& cb, std::shared_ptr<ct::Pool> pool, napi_threadsafe_function tsfn,
         int family, const ct::Tuple& reply, bool probe)
      : callback(Napi::Persistent(cb)),
        pool(std::move(pool)),
        tsfn(tsfn),
        family(family),
        reply(reply),
        probe(probe) {}

  void run() override {
    try {
      ct::Lease lease(*pool);
      err = lease.error();
      if (err == 0) err = lease.handle().get(family, reply, &entry, &found);
    } catch (const std::bad_alloc&) {
      err = -ENOMEM;
    }
    // Cannot fail: the lane stops before the thread-safe function closes. If
    // it did, the callback reference may not be touched off the JS thread.
    if (napi_call_threadsafe_function(tsfn, this, napi_tsfn_nonblocking) != napi_ok) {
      callback.SuppressDestruct();
      delete this;
    }
  }

  Napi::FunctionReference callback;
  std::shared_ptr<ct::Pool> pool;
  napi_threadsafe_function tsfn;
  int family;
  ct::Tuple reply;
  bool probe;
  ct::Entry entry;
  bool found = false;
  int err = 0;
};

void DeliverGet(Napi::Env env, Napi::Function, Conntrack* self, GetJob* job);
using GetTsfn = Napi::TypedThreadSafeFunction<Conntrack, GetJob, DeliverGet>;

class DumpWorker : public Worker {
 public:
  DumpWorker(const Napi::Function& cb, std::shared_ptr<ct::Pool> pool, int family,
             const uint8_t replyDst[16], uint16_t sport, uint16_t dport,
             std::vector<ct::Cidr> cidrs, size_t limit)
      : Worker(cb, std::move(pool), "conntrack dump"),
        family_(family),
        sport_(sport),
        dport_(dport),
        cidrs_(std::move(cidrs)),
        limit_(limit) {
    std::memcpy(replyDst_, replyDst, sizeof replyDst_);
  }

 protected:
  int Run(ct::Handle& h) override {
    return h.dumpByReplyPorts(family_, replyDst_, sport_, dport_, cidrs_, limit_, &result_);
  }
  Napi::Value Result(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    o.Set("total", static_cast<double>(result_.total));
    Napi::Array a = Napi::Array::New(env, result_.matches.size());
    for (uint32_t i = 0; i < result_.matches.size(); i++)
      a.Set(i, EntryObject(env, result_.matches[i]));
    o.Set("matches", a);
    o.Set("kernelFiltered", result_.kernelFiltered);
    return o;
  }

 private:
  int family_;
  uint8_t replyDst_[16];
  uint16_t sport_, dport_;
  std::vector<ct::Cidr> cidrs_;
  size_t limit_;
  ct::DumpResult result_;
};

class InsertWorker : public Worker {
 public:
  InsertWorker(const Napi::Function& cb, std::shared_ptr<ct::Pool> pool, int family,
               std::vector<uint8_t> records, size_t count, uint32_t timeoutSec)
      : Worker(cb, std::move(pool), "conntrack insert"),
        family_(family),
        records_(std::move(records)),
        count_(count),
        timeoutSec_(timeoutSec) {}

 protected:
  int Run(ct::Handle& h) override {
    return h.insert(family_, records_.data(), count_, timeoutSec_, &inserted_, &existed_);
  }
  Napi::Value Result(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    o.Set("inserted", static_cast<double>(inserted_));
    o.Set("existed", static_cast<double>(existed_));
    return o;
  }

 private:
  int family_;
  std::vector<uint8_t> records_;
  size_t count_;
  uint32_t timeoutSec_;
  size_t inserted_ = 0, existed_ = 0;
};

class Conntrack : public Napi::ObjectWrap<Conntrack> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Conntrack",
                       {
                           InstanceMethod<&Conntrack::Probe>("probe"),
                           InstanceMethod<&Conntrack::Get>("get"),
                           InstanceMethod<&Conntrack::GetNow>("getNow"),
                           InstanceMethod<&Conntrack::FindByReplyPorts>("findByReplyPorts"),
                           InstanceMethod<&Conntrack::Insert>("insert"),
                           InstanceMethod<&Conntrack::Close>("close"),
                       });
  }

  explicit Conntrack(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<Conntrack>(info), pool_(std::make_shared<ct::Pool>()) {
    Napi::Env env = info.Env();
    unsigned spin = kDefaultSpinMicros;
    if (info[0].IsObject()) {
      Napi::Value v = info[0].As<Napi::Object>().Get("spinMicros");
      if (v.IsNumber()) {
        double d = v.As<Napi::Number>().DoubleValue();
        if (!(d >= 0 && d <= kMaxSpinMicros))
          throw Napi::RangeError::New(env, "spinMicros must be 0-10000");
        spin = static_cast<unsigned>(d);
      }
    }
    lane_ = std::make_unique<ct::Lane>(spin);
    tsfn_ = GetTsfn::New(env, "docker-identd:conntrack", 0, 1, this);
    tsfn_.Unref(env);  // only pending lookups keep the event loop alive
    // Registered after the thread-safe function, so it runs before that
    // function's own hook: the lane thread is gone before it closes.
    if (napi_add_env_cleanup_hook(env, EnvCleanup, this) == napi_ok) hooked_ = true;
  }

  ~Conntrack() override {
    if (hooked_) napi_remove_env_cleanup_hook(Env(), EnvCleanup, this);
    Shutdown();
  }

  // Back on the JavaScript thread with a finished GET. No C++ exception may
  // escape into the thread-safe function: one thrown by JavaScript (in the
  // callback) is handed back to Node as a JavaScript exception.
  void Settle(Napi::Env env, std::unique_ptr<GetJob> job) {
    try {
      Napi::HandleScope scope(env);
      if (job->err < 0)
        job->callback.Call(
            {ErrnoError(env, job->err, job->probe ? "conntrack probe" : "conntrack get")});
      else if (job->probe)
        job->callback.Call({env.Null()});
      else
        job->callback.Call(
            {env.Null(), job->found ? Napi::Value(EntryObject(env, job->entry)) : env.Null()});
    } catch (const Napi::Error& e) {
      try {
        e.ThrowAsJavaScriptException();
      } catch (const Napi::Error&) {
        // The environment is going away: nobody is left to tell.
      }
    }
    if (--inflight_ == 0) {
      try {
        tsfn_.Unref(env);
        Unref();  // collectable again
      } catch (const Napi::Error&) {
        // Only while the environment shuts down.
      }
    }
  }

 private:
  static void EnvCleanup(void* arg) {
    auto* self = static_cast<Conntrack*>(arg);
    self->hooked_ = false;
    self->Shutdown();
  }

  // Closes the sockets, runs what the lane still holds (those GETs fail with
  // EBADF) and lets the thread-safe function go once it has delivered them.
  void Shutdown() {
    pool_->close();
    lane_->stop();
    if (!released_) {
      released_ = true;
      tsfn_.Release();
    }
  }

  void Submit(Napi::Env env, const Napi::Function& cb, int family, const ct::Tuple& reply,
              bool probe) {
    if (released_) {  // closed: the only case that calls back synchronously
      cb.Call({ErrnoError(env, -EBADF, probe ? "conntrack probe" : "conntrack get")});
      return;
    }
    auto job = std::make_unique<GetJob>(cb, pool_, tsfn_, family, reply, probe);
    if (!lane_->submit(job.get())) throw Napi::Error::New(env, "cannot start the lookup thread");
    job.release();  // the lane owns it now
    if (inflight_++ == 0) {
      tsfn_.Ref(env);
      Ref();  // keep this object (and its thread) alive until all settle
    }
  }

  void Probe(const Napi::CallbackInfo& info) {
    // A GET of a tuple no connection has: succeeds when netlink conntrack is
    // usable, EPERM without CAP_NET_ADMIN.
    Submit(info.Env(), CallbackArg(info, 0), 4, ct::Tuple(), true);
  }

  // Arguments 0-4 of get/getNow: family, reply src, reply dst, reply ports.
  static int ReplyTupleArgs(const Napi::CallbackInfo& info, ct::Tuple* reply) {
    int family = FamilyArg(info, 0);
    AddrArg(info, 1, family, reply->src);
    AddrArg(info, 2, family, reply->dst);
    reply->sport = PortArg(info, 3);
    reply->dport = PortArg(info, 4);
    return family;
  }

  void Get(const Napi::CallbackInfo& info) {
    ct::Tuple reply;
    int family = ReplyTupleArgs(info, &reply);
    Submit(info.Env(), CallbackArg(info, 5), family, reply, false);
  }

  // The same GET on the JavaScript thread. The kernel answers a ctnetlink GET
  // inside sendmsg(), so the reply is already queued when recv() runs: this
  // costs microseconds and saves the hand-off to the lookup thread and back,
  // which dominates under load on a small machine. Throws on errors.
  Napi::Value GetNow(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    ct::Tuple reply;
    int family = ReplyTupleArgs(info, &reply);
    ct::Entry entry;
    bool found = false;
    int err;
    {
      ct::Lease lease(*pool_);
      err = lease.error();
      if (err == 0) err = lease.handle().get(family, reply, &entry, &found);
    }
    if (err < 0) throw Napi::Error(env, ErrnoError(env, err, "conntrack get"));
    return found ? Napi::Value(EntryObject(env, entry)) : env.Null();
  }

  void FindByReplyPorts(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int family = FamilyArg(info, 0);
    uint8_t replyDst[16];
    AddrArg(info, 1, family, replyDst);
    uint16_t sport = PortArg(info, 2);
    uint16_t dport = PortArg(info, 3);
    if (!info[4].IsArray()) throw Napi::TypeError::New(env, "cidrs must be an array");
    Napi::Array list = info[4].As<Napi::Array>();
    std::vector<ct::Cidr> cidrs;
    for (uint32_t i = 0; i < list.Length(); i++) {
      Napi::Value item = list.Get(i);
      if (!item.IsArray()) throw Napi::TypeError::New(env, "cidr must be [address, prefix]");
      Napi::Array pair = item.As<Napi::Array>();
      Napi::Value addr = pair.Get(0u), prefix = pair.Get(1u);
      ct::Cidr c;
      c.family = family;
      if (!addr.IsString() ||
          !ct::parseAddr(family, addr.As<Napi::String>().Utf8Value().c_str(), c.addr) ||
          !prefix.IsNumber())
        throw Napi::TypeError::New(env, "invalid cidr");
      int bits = prefix.As<Napi::Number>().Int32Value();
      if (bits < 0 || bits > static_cast<int>(ct::addrLen(family) * 8))
        throw Napi::TypeError::New(env, "invalid cidr prefix");
      c.prefix = static_cast<unsigned>(bits);
      cidrs.push_back(c);
    }
    size_t limit = kMaxMatches;
    if (info[5].IsNumber()) {
      int l = info[5].As<Napi::Number>().Int32Value();
      if (l >= 0 && static_cast<size_t>(l) < kMaxMatches) limit = static_cast<size_t>(l);
    }
    Napi::Function cb = CallbackArg(info, 6);
    (new DumpWorker(cb, pool_, family, replyDst, sport, dport, std::move(cidrs), limit))->Start();
  }

  void Insert(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int family = FamilyArg(info, 0);
    if (!info[1].IsBuffer()) throw Napi::TypeError::New(env, "records must be a Buffer");
    Napi::Buffer<uint8_t> buf = info[1].As<Napi::Buffer<uint8_t>>();
    size_t recLen = 4 * ct::addrLen(family) + 8;
    if (buf.Length() % recLen != 0)
      throw Napi::RangeError::New(env, "records length is not a multiple of the record size");
    uint32_t timeoutSec = 3600;
    if (info[2].IsNumber()) timeoutSec = info[2].As<Napi::Number>().Uint32Value();
    Napi::Function cb = CallbackArg(info, 3);
    std::vector<uint8_t> records(buf.Data(), buf.Data() + buf.Length());
    (new InsertWorker(cb, pool_, family, std::move(records), buf.Length() / recLen, timeoutSec))
        ->Start();
  }

  void Close(const Napi::CallbackInfo&) { Shutdown(); }

  std::shared_ptr<ct::Pool> pool_;
  std::unique_ptr<ct::Lane> lane_;
  GetTsfn tsfn_;
  size_t inflight_ = 0;  // GETs submitted and not yet settled (JS thread only)
  bool released_ = false;
  bool hooked_ = false;
};

void DeliverGet(Napi::Env env, Napi::Function, Conntrack* self, GetJob* job) {
  std::unique_ptr<GetJob> owned(job);
  // env is null when the environment goes away with this GET undelivered:
  // the job (and its callback reference, while Node-API still can) is freed.
  if (env == nullptr) return;
  self->Settle(env, std::move(owned));
}

Napi::Value FormatAddress(const Napi::CallbackInfo& info) {
  int family = FamilyArg(info, 0);
  if (!info[1].IsBuffer() || info[1].As<Napi::Buffer<uint8_t>>().Length() != ct::addrLen(family))
    throw Napi::TypeError::New(info.Env(), "address must be a Buffer of 4 or 16 bytes");
  return Napi::String::New(info.Env(),
                           ct::formatAddr(family, info[1].As<Napi::Buffer<uint8_t>>().Data()));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("Conntrack", Conntrack::Define(env));
  exports.Set("formatAddress", Napi::Function::New<FormatAddress>(env, "formatAddress"));
  exports.Set("abiVersion", kAbiVersion);
  sdnotify::Register(env, exports);  // notify(): sd_notify for the systemd unit
  return exports;
}

}  // namespace

NODE_API_MODULE(conntrack_netlink, Init)
