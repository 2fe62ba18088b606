// CRC32C (Castagnoli, reflected polynomial 0x82F63B78, initial value and final xor 0xFFFFFFFF):
// the checksum of iSCSI, ext4, Btrfs and RocksDB, and of engram's .engt table files.
//
// crc32c() uses the SSE4.2 crc32 instruction when the CPU has it (checked once at run time) and
// a portable slicing-by-8 table otherwise; both give the same values.
//   crc32c("123456789") == 0xE3069283, crc32c("") == 0.
#pragma once

#include <cstddef>
#include <cstdint>

namespace engram {

// The CRC32C of `size` bytes at `data`.
uint32_t crc32c(const void* data, size_t size);

// Continues a checksum: crc32c_extend(crc32c(a), b) == crc32c(a followed by b), and
// crc32c_extend(0, x) == crc32c(x).
uint32_t crc32c_extend(uint32_t crc, const void* data, size_t size);

// The two implementations behind crc32c_extend, for tests and benchmarks.
uint32_t crc32c_extend_portable(uint32_t crc, const void* data, size_t size);
// True when this CPU has SSE4.2 (always false off x86-64).
bool crc32c_hardware_available();
// Requires crc32c_hardware_available() (throws std::logic_error otherwise).
uint32_t crc32c_extend_hardware(uint32_t crc, const void* data, size_t size);

}  // namespace engram
