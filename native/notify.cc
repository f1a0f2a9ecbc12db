// sd_notify(3) without libsystemd (see notify.h). Node.js has no unix
// datagram sockets, so the daemon's readiness, status and watchdog messages
// are written here: a fresh SOCK_DGRAM socket per message, one sendto().
#include "notify.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>

#include "errno_error.h"

namespace sdnotify {

int Send(const char* socket, const char* state, size_t len) {
  if (socket == nullptr || state == nullptr || len == 0 || memchr(state, '\0', len) != nullptr)
    return -EINVAL;
  size_t pathLen = strlen(socket);
  if (pathLen < 2 || (socket[0] != '/' && socket[0] != '@')) return -EAFNOSUPPORT;

  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  // A path needs its terminating NUL to fit; an abstract name is exactly its bytes.
  if (pathLen + (socket[0] == '/' ? 1 : 0) > sizeof sa.sun_path) return -ENAMETOOLONG;
  memcpy(sa.sun_path, socket, pathLen);
  socklen_t saLen = static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + pathLen);
  if (socket[0] == '@')
    sa.sun_path[0] = '\0';
  else
    saLen += 1;

  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  ssize_t n;
  do {
    n = sendto(fd, state, len, MSG_NOSIGNAL | MSG_DONTWAIT,
               reinterpret_cast<const struct sockaddr*>(&sa), saLen);
  } while (n < 0 && errno == EINTR);
  int err = n < 0 ? -errno : (static_cast<size_t>(n) != len ? -EMSGSIZE : 0);
  close(fd);
  return err;
}

namespace {

Napi::Value Notify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw Napi::TypeError::New(env, "state must be a string");
  std::string state = info[0].As<Napi::String>().Utf8Value();
  std::string socket;
  if (info.Length() > 1 && !info[1].IsUndefined()) {
    if (!info[1].IsString()) throw Napi::TypeError::New(env, "socket must be a string");
    socket = info[1].As<Napi::String>().Utf8Value();
  } else if (const char* s = getenv("NOTIFY_SOCKET")) {
    socket = s;
  }
  if (socket.empty()) return Napi::Boolean::New(env, false);
  int err = Send(socket.c_str(), state.data(), state.size());
  if (err < 0) {
    Napi::Error e = identd::ErrnoError(env, err, "sendto", " " + socket + " (sd_notify)");
    e.Set("address", Napi::String::New(env, socket));
    throw e;
  }
  return Napi::Boolean::New(env, true);
}

}  // namespace

void Register(Napi::Env env, Napi::Object exports) {
  exports.Set("notify", Napi::Function::New<Notify>(env, "notify"));
}

}  // namespace sdnotify
