// Errors shaped like Node's own system errors, for every part of the addon.
#ifndef DOCKER_IDENTD_ERRNO_ERROR_H_
#define DOCKER_IDENTD_ERRNO_ERROR_H_

#include <napi.h>
#include <uv.h>

#include <string>

namespace identd {

// An Error with code (e.g. "EPERM"), errno (negative) and syscall; the
// message is "CODE: text, syscall" followed by `detail`.
inline Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall,
                              const std::string& detail = "") {
  char name[64];
  char text[128];
  uv_err_name_r(err, name, sizeof name);
  uv_strerror_r(err, text, sizeof text);
  Napi::Error e = Napi::Error::New(env, std::string(name) + ": " + text + ", " + syscall + detail);
  e.Set("code", Napi::String::New(env, name));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

}  // namespace identd

#endif  // DOCKER_IDENTD_ERRNO_ERROR_H_
