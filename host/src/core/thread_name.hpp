// Names the calling thread (at most 15 characters), as shown by top -H, ps
// -L, gdb and perf, so an operator can tell the server's threads apart.
#pragma once

#include <pthread.h>

namespace gv {

inline void name_this_thread(const char* name) { pthread_setname_np(pthread_self(), name); }

}  // namespace gv
