#include "args.h"
#include "commands.h"
namespace engram::cli {
int run_generate(int, char**) { throw UsageError("generate: not implemented yet"); }
}  // namespace engram::cli
