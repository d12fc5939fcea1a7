// Host-side Status constructors shared by every launch function.
#include <cstdarg>
#include <cstdio>

#include "common.cuh"

namespace kvp {

Status ok_status() {
  Status s;
  s.code = StatusCode::kOk;
  s.message[0] = '\0';
  return s;
}

Status make_status(StatusCode code, const char* fmt, ...) {
  Status s;
  s.code = code;
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(s.message, sizeof(s.message), fmt, ap);
  va_end(ap);
  return s;
}

// cudaGetLastError after a launch: a bad grid or too much shared memory shows up here, while an
// illegal address inside the kernel only surfaces at the next synchronizing call.
Status last_launch_status(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return ok_status();
  return make_status(StatusCode::kCudaError, "%s: kernel launch failed: %s (%s)", what,
                     cudaGetErrorString(err), cudaGetErrorName(err));
}

}  // namespace kvp
