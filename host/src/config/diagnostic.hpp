// A config problem with where it is, printed as
//   FILE:LINE:COLUMN: KEY.PATH: MESSAGE
#pragma once

#include <string>

namespace gv::config {

struct Mark {
  int line = 0;    // 1-based; 0 when unknown
  int column = 0;  // 1-based
};

struct Diagnostic {
  std::string file;
  Mark mark;
  std::string path;  // "server.listen", "plugins.hello.config.greeting"
  std::string message;

  std::string to_string() const {
    std::string s = file;
    if (mark.line > 0) s += ":" + std::to_string(mark.line) + ":" + std::to_string(mark.column);
    s += ": ";
    if (!path.empty()) s += path + ": ";
    return s + message;
  }
};

}  // namespace gv::config
