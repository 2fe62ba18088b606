// placeholder: being written
#include "args.h"
#include "commands.h"

namespace engram::cli {

int run_table(int, char**) {
  throw UsageError("engram table: not built yet");
}

}  // namespace engram::cli
