#include "engram/util/file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "engram/util/error.h"
#include "temp_dir_test.h"

namespace engram {
namespace {

class FileTest : public test::TempDirTest {};

TEST_F(FileTest, WriteAtomicThenRead) {
  const std::string file = dir_ + "/out.bin";
  const std::string bytes("binary\0data\xff", 12);
  write_file_atomic(file, bytes);
  EXPECT_EQ(read_file(file), bytes);
  write_file_atomic(file, "second, shorter");  // replaces the old file whole
  EXPECT_EQ(read_file(file), "second, shorter");
  write_file_atomic(file, "");
  EXPECT_EQ(read_file(file), "");
  EXPECT_EQ(entries(), (std::vector<std::string>{"out.bin"}));  // no temporary file left
  struct stat st {};
  ASSERT_EQ(::stat(file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
}

TEST_F(FileTest, LargeWrite) {
  std::string bytes(5 << 20, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 131 % 251);
  const std::string file = dir_ + "/large.bin";
  write_file_atomic(file, bytes);
  EXPECT_EQ(read_file(file), bytes);
}

TEST_F(FileTest, UnwritableDirectoryIsAnIoError) {
  // /proc accepts no new files, even from root; a missing directory and a file used as a
  // directory fail the same way.
  for (const std::string& target :
       {std::string("/proc/engram_file_test.bin"), dir_ + "/missing/out.bin"}) {
    try {
      write_file_atomic(target, "x");
      FAIL() << "expected IoError for " << target;
    } catch (const IoError& e) {
      EXPECT_EQ(std::string(e.what()).rfind(target + ": cannot create temporary file: ", 0), 0u)
          << e.what();
    }
  }
  write_file_atomic(dir_ + "/plain", "x");
  EXPECT_THROW(write_file_atomic(dir_ + "/plain/out.bin", "x"), IoError);
  EXPECT_EQ(entries(), (std::vector<std::string>{"plain"}));
}

TEST_F(FileTest, ReadErrors) {
  EXPECT_THROW(read_file(dir_ + "/missing"), IoError);
  try {
    read_file(dir_);
    FAIL() << "expected IoError";
  } catch (const IoError& e) {
    EXPECT_EQ(std::string(e.what()), dir_ + ": is a directory, expected a file");
  }
}

}  // namespace
}  // namespace engram
