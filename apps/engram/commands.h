// The engram subcommands. Each returns the process exit status; errors are thrown
// (engram::Error: exit 1; cli::UsageError: exit 2) and reported by main.
#pragma once

#include <string>

namespace engram::cli {

int run_tokenize(int argc, char** argv);
int run_compress(int argc, char** argv);
int run_hash(int argc, char** argv);
int run_bench(int argc, char** argv);
int run_layer(int argc, char** argv);
int run_prepare(int argc, char** argv);
int run_params(int argc, char** argv);
int run_train(int argc, char** argv);  // cmd_train.cpp (train and eval)
int run_eval(int argc, char** argv);
int run_plot(int argc, char** argv);
int run_generate(int argc, char** argv);  // cmd_generate.cpp
int run_serve(int argc, char** argv);     // cmd_serve.cpp
int run_table(int argc, char** argv);     // cmd_table.cpp (table convert, table gather)

// All of standard input (binary).
std::string read_stdin();
// Writes to standard output, throwing IoError if it fails (e.g. a closed pipe).
void write_stdout(const std::string& s);

}  // namespace engram::cli
