#include "args.h"
#include "commands.h"
namespace engram::cli {
int run_train(int, char**) { throw UsageError("train: not implemented yet"); }
int run_eval(int, char**) { throw UsageError("eval: not implemented yet"); }
}  // namespace engram::cli
