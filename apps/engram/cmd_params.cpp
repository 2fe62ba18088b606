// engram params: the parameter accountant of a model config (BACKBONE_SPEC §5).
#include <string>

#include "args.h"
#include "commands.h"
#include "engram/model/config.h"
#include "engram/model/param_count.h"

namespace engram::cli {

int run_params(int argc, char** argv) {
  const Args args(argc, argv, 2, {"config"}, {"json"});
  if (!args.positional().empty())
    throw UsageError("unexpected argument \"" + args.positional()[0] + "\"");
  const auto config = model::ModelConfig::from_file(args.required("config"));
  const auto count = model::count_params(config);
  write_stdout(args.has("json") ? model::render_param_json(count) + "\n"
                                : model::render_param_table(count));
  return 0;
}

}  // namespace engram::cli
