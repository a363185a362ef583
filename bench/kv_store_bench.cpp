// T2 spill tier throughput: KvStore::put_batch (spill) and KvStore::get (load) of 128 KiB KV blocks,
// against the disk's own sequential write and read measured in the same run on the same folder.
//
//   kv_store_bench [folder (default: current folder)] [GiB (default 1)]
//
// Page-cache honesty: the disk write is timed with its fsync. The disk read is timed twice: after
// posix_fadvise(DONTNEED) dropped the file's clean pages ("cold", the device), and again at once ("warm",
// the page cache). put_batch returns when the batch is in the memtable, unsynced (KV is a cache; the WAL
// is off by default, StoreOptions::kv_write_wal), so it is reported alone and with the flush that writes
// the blob files and syncs them.
// Persists (write-through on commit, as KvTiers::persist_job does it) are timed per session turn: the new
// blocks through the WAL, then make_durable of the chain, with and without a WAL-less block in the chain.
// Loads are timed warm (just written) and cold (blob files dropped with DONTNEED first): one get per block
// in random order, and get_batch (one MultiGet) of 64 blocks at a time in the order they were written, as
// admission loads a chain after a restart.
#include <fcntl.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "memory/kv_store.h"
#include "memory/rocksdb_store.h"

namespace {

namespace mem = agentserve::memory;
namespace fs = std::filesystem;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

void drop_cached_pages(const fs::path& file) {
  int fd = open(file.c_str(), O_RDONLY);
  if (fd < 0) return;
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
}

struct DiskFigures {
  double write_gbs = 0;  // write + fsync
  double cold_read_gbs = 0;
  double warm_read_gbs = 0;
};

DiskFigures measure_disk(const fs::path& file, size_t bytes) {
  DiskFigures d;
  std::vector<char> buf(4 << 20);
  std::mt19937_64 rng(7);
  for (auto& c : buf) c = static_cast<char>(rng());
  int fd = open(file.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
  if (fd < 0) {
    std::perror("open bench file");
    return d;
  }
  auto t0 = std::chrono::steady_clock::now();
  for (size_t done = 0; done < bytes; done += buf.size()) {
    if (write(fd, buf.data(), buf.size()) != static_cast<ssize_t>(buf.size())) std::perror("write");
  }
  fsync(fd);
  d.write_gbs = static_cast<double>(bytes) / seconds_since(t0) / 1e9;
  close(fd);

  auto read_all = [&] {
    int rfd = open(file.c_str(), O_RDONLY);
    auto t = std::chrono::steady_clock::now();
    while (read(rfd, buf.data(), buf.size()) > 0) {
    }
    double s = seconds_since(t);
    close(rfd);
    return static_cast<double>(bytes) / s / 1e9;
  };
  drop_cached_pages(file);
  d.cold_read_gbs = read_all();
  d.warm_read_gbs = read_all();
  fs::remove(file);
  return d;
}

// Write-through on commit as KvTiers::persist_job does it: a session's turn adds kTurnBlocks blocks to its
// chain, written through the WAL, then make_durable(chain). Between turns other sessions spill
// kTrafficBlocks cache blocks (WAL-less); with `spill_chain_block`, one block of the session's own chain
// was spilled too (T0 evicted it before the commit), so make_durable must make a WAL-less write durable.
constexpr size_t kTurnBlocks = 2;
constexpr size_t kTrafficBlocks = 8;
constexpr size_t kTurns = 200;

// Persists per second, or 0 after a failure (printed).
double measure_persists(mem::KvStore& kv, std::span<const int32_t> tokens,
                        const std::vector<std::vector<std::byte>>& payloads, bool spill_chain_block) {
  static uint64_t next_key = 0x7e57000000ull;  // distinct keys across both runs
  std::vector<mem::BlockKey> chain;
  std::vector<mem::KvSpillBlock> batch;
  double persist_s = 0;
  for (size_t turn = 0; turn < kTurns; ++turn) {
    batch.clear();
    for (size_t i = 0; i < kTrafficBlocks; ++i)
      batch.push_back({mem::BlockKey{next_key++, 1}, tokens, payloads[i % payloads.size()]});
    if (spill_chain_block) {
      chain.push_back(mem::BlockKey{next_key++, 2});
      batch.push_back({chain.back(), tokens, payloads[0]});
    }
    if (auto s = kv.put_batch(batch); !s.ok()) {
      std::printf("traffic put_batch failed: %s\n", s.to_string().c_str());
      return 0;
    }
    batch.clear();
    for (size_t i = 0; i < kTurnBlocks; ++i) {
      chain.push_back(mem::BlockKey{next_key++, 3});
      batch.push_back({chain.back(), tokens, payloads[(turn + i) % payloads.size()]});
    }
    const auto t = std::chrono::steady_clock::now();
    agentserve::Status s = kv.put_batch(batch, mem::Durability::kLogged);
    if (s.ok()) s = kv.make_durable(chain);
    persist_s += seconds_since(t);
    if (!s.ok()) {
      std::printf("persist failed: %s\n", s.to_string().c_str());
      return 0;
    }
  }
  return static_cast<double>(kTurns) / persist_s;
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path folder = argc > 1 ? fs::path(argv[1]) : fs::current_path();
  const double gib = argc > 2 ? std::atof(argv[2]) : 1.0;
  const size_t total_bytes = static_cast<size_t>(gib * (1ull << 30));

  // 2 layers x 4 KV heads x 16 tokens x 128 head_dim x f32 x (K and V) = 128 KiB per block.
  const mem::KvLayout layout{.n_layers = 2, .n_kv_heads = 4, .head_dim = 128, .block_size = 16};
  const size_t block_bytes = layout.block_bytes();
  const size_t n_blocks = total_bytes / block_bytes;
  constexpr size_t kBatch = 32;  // 4 MiB per WriteBatch

  struct statfs sfs {};
  statfs(folder.c_str(), &sfs);
  std::printf("kv_store_bench: %s, folder %s (fs type 0x%lx), %zu blocks of %zu KiB = %.2f GiB\n",
              cpu_model().c_str(), folder.c_str(), static_cast<unsigned long>(sfs.f_type), n_blocks,
              block_bytes >> 10, static_cast<double>(n_blocks * block_bytes) / (1ull << 30));

  DiskFigures disk = measure_disk(folder / "kv_store_bench.seq", n_blocks * block_bytes);
  std::printf(
      "disk sequential: write+fsync %.2f GB/s, read cold %.2f GB/s, read warm (page cache) %.2f GB/s\n",
      disk.write_gbs, disk.cold_read_gbs, disk.warm_read_gbs);

  const fs::path db_path = folder / "kv_store_bench.db";
  fs::remove_all(db_path);
  mem::StoreOptions options;
  options.path = db_path.string();
  options.kv_quota_bytes = 4 * n_blocks * mem::kv_block_encoded_size(16, block_bytes);
  auto store = mem::RocksDbStore::open(options);
  if (!store.ok()) {
    std::printf("open failed: %s\n", store.status().to_string().c_str());
    return 1;
  }
  mem::KvBlockFormat format = mem::KvBlockFormat::make("bench-model", layout);
  auto kv = mem::KvStore::open(**store, format, options.kv_quota_bytes);
  if (!kv.ok()) {
    std::printf("kv open failed: %s\n", kv.status().to_string().c_str());
    return 1;
  }

  // One batch worth of distinct payloads; each block's key differs, the bytes repeat per batch.
  std::vector<std::vector<std::byte>> payloads(kBatch, std::vector<std::byte>(block_bytes));
  std::mt19937_64 rng(1);
  for (auto& p : payloads) {
    for (auto& b : p) b = static_cast<std::byte>(rng());
  }
  std::vector<int32_t> tokens(16);
  std::iota(tokens.begin(), tokens.end(), 0);
  auto key_of = [](size_t i) { return mem::BlockKey{0x5eed0000ull + i, i * 0x9e3779b97f4a7c15ull}; };

  auto t0 = std::chrono::steady_clock::now();
  std::vector<mem::KvSpillBlock> batch;
  for (size_t i = 0; i < n_blocks; i += kBatch) {
    batch.clear();
    for (size_t j = i; j < std::min(n_blocks, i + kBatch); ++j)
      batch.push_back({key_of(j), tokens, payloads[j % kBatch]});
    if (auto s = (*kv)->put_batch(batch); !s.ok()) {
      std::printf("put_batch failed: %s\n", s.to_string().c_str());
      return 1;
    }
  }
  const double put_s = seconds_since(t0);
  (void)(*store)->db()->Flush(rocksdb::FlushOptions(), (*store)->handle(mem::ColumnFamily::kKv));
  (void)(*store)->db()->FlushWAL(true);
  const double put_flush_s = seconds_since(t0);
  const double data = static_cast<double>(n_blocks * block_bytes);
  std::printf("spill put_batch (memtable%s, unsynced): %.2f GB/s = %.2fx disk write\n",
              options.kv_write_wal ? " + WAL" : ", no WAL", data / put_s / 1e9,
              data / put_s / 1e9 / disk.write_gbs);
  std::printf("spill put_batch + flush to synced blob files: %.2f GB/s = %.2fx disk write\n",
              data / put_flush_s / 1e9, data / put_flush_s / 1e9 / disk.write_gbs);

  std::vector<size_t> order(n_blocks);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<std::byte> out(block_bytes);
  auto load_all = [&]() -> double {
    auto t = std::chrono::steady_clock::now();
    for (size_t i : order) {
      if (auto s = (*kv)->get(key_of(i), tokens, out); !s.ok()) {
        std::printf("get failed: %s\n", s.to_string().c_str());
        return 0;
      }
    }
    return data / seconds_since(t) / 1e9;
  };
  constexpr size_t kLoadBatch = 64;
  std::vector<std::byte> outs(kLoadBatch * block_bytes);
  auto load_chains = [&]() -> double {
    auto t = std::chrono::steady_clock::now();
    std::vector<mem::KvLoad> loads;
    for (size_t i = 0; i < n_blocks; i += kLoadBatch) {
      loads.clear();
      for (size_t j = i; j < std::min(n_blocks, i + kLoadBatch); ++j)
        loads.push_back({key_of(j), tokens, std::span(outs).subspan((j - i) * block_bytes, block_bytes)});
      for (const auto& s : (*kv)->get_batch(loads)) {
        if (!s.ok()) {
          std::printf("get_batch failed: %s\n", s.to_string().c_str());
          return 0;
        }
      }
    }
    return data / seconds_since(t) / 1e9;
  };
  auto drop_db_pages = [&] {
    for (const auto& e : fs::directory_iterator(db_path)) drop_cached_pages(e.path());
  };
  const double warm_gbs = load_all();
  drop_db_pages();
  const double cold_gbs = load_all();
  std::printf(
      "load get, random order, 1 thread: warm %.2f GB/s = %.2fx warm disk read; cold %.2f GB/s = %.2fx cold "
      "disk read\n",
      warm_gbs, warm_gbs / disk.warm_read_gbs, cold_gbs, cold_gbs / disk.cold_read_gbs);
  const double chain_warm_gbs = load_chains();
  drop_db_pages();
  const double chain_cold_gbs = load_chains();
  std::printf(
      "load get_batch of %zu, written order, 1 thread: warm %.2f GB/s = %.2fx warm disk read; cold %.2f GB/s "
      "= %.2fx cold disk read\n",
      kLoadBatch, chain_warm_gbs, chain_warm_gbs / disk.warm_read_gbs, chain_cold_gbs,
      chain_cold_gbs / disk.cold_read_gbs);
  const double clean = measure_persists(**kv, tokens, payloads, false);
  const double mixed = measure_persists(**kv, tokens, payloads, true);
  std::printf(
      "persist (a session turn: %zu new blocks + make_durable of its chain, between turns %zu cache "
      "spills):\n"
      "  no chain block spilled before the commit: %.0f persists/s (%.2f ms each)\n"
      "  one chain block spilled (WAL-less) before the commit: %.0f persists/s (%.2f ms each)\n",
      kTurnBlocks, kTrafficBlocks, clean, 1e3 / clean, mixed, 1e3 / mixed);
  mem::KvStoreCounters c = (*kv)->counters();
  std::printf(
      "counters: hits %lld, misses %lld, written %.2f GiB, read %.2f GiB, dropped %lld, evictions %lld\n",
      static_cast<long long>(c.hits), static_cast<long long>(c.misses),
      static_cast<double>(c.bytes_written) / (1ull << 30), static_cast<double>(c.bytes_read) / (1ull << 30),
      static_cast<long long>(c.dropped_corrupt + c.dropped_mismatch), static_cast<long long>(c.evictions));
  kv->reset();
  store->reset();
  fs::remove_all(db_path);
  return 0;
}
