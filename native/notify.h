// sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET.
#pragma once

#include <napi.h>

#include <cstddef>

namespace sdnotify {

// Sends `state` (len bytes) as one datagram to the unix socket `socket`: an
// absolute path, or "@name" for an abstract socket. Returns 0 when sent, or a
// negative errno (-EINVAL for an empty or NUL-containing message,
// -EAFNOSUPPORT for an address that is neither, -ENAMETOOLONG, ...).
// Never blocks: a full receive queue is -EAGAIN.
int Send(const char* socket, const char* state, size_t len);

// Adds notify(state: string, socket?: string): boolean to `exports`. Without
// `socket` it uses $NOTIFY_SOCKET; returns false when that is unset or empty
// (nothing to notify, as sd_notify returns 0), true when sent, and throws an
// Error carrying code, errno and syscall on failure.
void Register(Napi::Env env, Napi::Object exports);

}  // namespace sdnotify
