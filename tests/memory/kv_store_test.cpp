#include "memory/kv_store.h"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <random>
#include <thread>
#include <vector>

namespace agentserve::memory {
namespace {

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "as-kvstore-XXXXXX").string();
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

const KvLayout kLayout{.n_layers = 2, .n_kv_heads = 2, .head_dim = 8, .block_size = 4};  // 512-byte blocks

// A block whose tokens and bytes follow from its number, so any returned block can be checked.
struct TestBlock {
  BlockKey key;
  std::vector<int32_t> tokens;
  std::vector<std::byte> payload;

  explicit TestBlock(uint64_t n) : key{n * 0x9e3779b97f4a7c15ull, n}, payload(kLayout.block_bytes()) {
    for (int i = 0; i < kLayout.block_size; ++i) tokens.push_back(static_cast<int32_t>(n * 10 + i));
    std::mt19937_64 rng(n);
    for (auto& b : payload) b = static_cast<std::byte>(rng());
  }
  KvSpillBlock spill() const { return {key, tokens, payload}; }
};

Status put(KvStore& kv, std::initializer_list<uint64_t> ns) {
  std::vector<TestBlock> blocks;
  for (uint64_t n : ns) blocks.emplace_back(n);
  std::vector<KvSpillBlock> spills;
  for (const auto& b : blocks) spills.push_back(b.spill());
  return kv.put_batch(spills);
}

// OK and the right bytes, or the error.
Status get_checked(KvStore& kv, uint64_t n) {
  TestBlock want(n);
  std::vector<std::byte> out(kLayout.block_bytes());
  AS_RETURN_IF_ERROR(kv.get(want.key, want.tokens, out));
  if (out != want.payload) return Status::internal("wrong bytes returned for block " + std::to_string(n));
  return Status::ok_status();
}

struct Env {
  TempDir dir;
  std::unique_ptr<RocksDbStore> store;
  std::unique_ptr<KvStore> kv;
  KvBlockFormat format = KvBlockFormat::make("model-a", kLayout);
  const uint64_t block_value_bytes = kv_block_encoded_size(kLayout.block_size, kLayout.block_bytes());

  void open(uint64_t quota_blocks, std::string_view fingerprint = "model-a", uint64_t write_buffer_bytes = 0) {
    kv.reset();
    store.reset();
    StoreOptions options{.path = (dir.path / "db").string()};
    if (write_buffer_bytes > 0) options.kv_write_buffer_bytes = write_buffer_bytes;
    auto s = RocksDbStore::open(options);
    REQUIRE_MESSAGE(s.ok(), s.status().to_string());
    store = std::move(s).value();
    format = KvBlockFormat::make(fingerprint, kLayout);
    auto k = KvStore::open(*store, format, quota_blocks * block_value_bytes);
    REQUIRE_MESSAGE(k.ok(), k.status().to_string());
    kv = std::move(k).value();
  }
};

TEST_CASE("put_batch then get returns the same verified bytes; a miss is NotFound") {
  Env env;
  env.open(100);
  REQUIRE(put(*env.kv, {1, 2, 3}).ok());
  for (uint64_t n : {1, 2, 3}) CHECK(get_checked(*env.kv, n).ok());
  CHECK(get_checked(*env.kv, 4).code() == StatusCode::kNotFound);
  CHECK(env.kv->contains(TestBlock(2).key));
  CHECK(env.kv->usage_bytes() == 3 * env.block_value_bytes);
  CHECK(env.kv->num_blocks() == 3);
  KvStoreCounters c = env.kv->counters();
  CHECK(c.hits == 3);
  CHECK(c.misses == 1);
  CHECK(c.bytes_written == static_cast<int64_t>(3 * env.block_value_bytes));
  CHECK(c.bytes_read == static_cast<int64_t>(3 * env.block_value_bytes));
}

TEST_CASE("erase removes a block and its usage; a wrong-sized buffer is InvalidArgument") {
  Env env;
  env.open(100);
  REQUIRE(put(*env.kv, {1, 2}).ok());
  REQUIRE(env.kv->erase(TestBlock(1).key).ok());
  CHECK(env.kv->erase(TestBlock(1).key).ok());
  CHECK_FALSE(env.kv->contains(TestBlock(1).key));
  CHECK(env.kv->usage_bytes() == env.block_value_bytes);
  std::vector<std::byte> small(10);
  CHECK(env.kv->get(TestBlock(2).key, {}, small).code() == StatusCode::kInvalidArgument);
}

TEST_CASE("writing the same key again replaces it without double counting") {
  Env env;
  env.open(100);
  REQUIRE(put(*env.kv, {1, 1}).ok());
  REQUIRE(put(*env.kv, {1}).ok());
  CHECK(env.kv->num_blocks() == 1);
  CHECK(env.kv->usage_bytes() == env.block_value_bytes);
  CHECK(get_checked(*env.kv, 1).ok());
}

TEST_CASE("the quota evicts least recently used blocks, and a hit makes a block recent") {
  Env env;
  env.open(3);
  REQUIRE(put(*env.kv, {1, 2, 3}).ok());
  REQUIRE(get_checked(*env.kv, 1).ok());  // order by last use now 2, 3, 1
  REQUIRE(put(*env.kv, {4}).ok());
  CHECK_FALSE(env.kv->contains(TestBlock(2).key));
  for (uint64_t n : {1, 3, 4}) CHECK(get_checked(*env.kv, n).ok());
  CHECK(env.kv->counters().evictions == 1);
  CHECK(env.kv->usage_bytes() <= env.kv->quota_bytes());
  REQUIRE(put(*env.kv, {5, 6}).ok());  // LRU now 1, 3, 4 -> evict 1 and 3
  CHECK(env.kv->num_blocks() == 3);
  CHECK(env.kv->contains(TestBlock(4).key));
  CHECK(get_checked(*env.kv, 1).code() == StatusCode::kNotFound);
}

TEST_CASE("a batch larger than the whole quota is refused and writes nothing") {
  Env env;
  env.open(2);
  REQUIRE(put(*env.kv, {1}).ok());
  Status s = put(*env.kv, {2, 3, 4});
  CHECK(s.code() == StatusCode::kResourceExhausted);
  CHECK(env.kv->counters().quota_refusals == 1);
  CHECK(env.kv->num_blocks() == 1);
  CHECK(get_checked(*env.kv, 1).ok());
  CHECK(get_checked(*env.kv, 2).code() == StatusCode::kNotFound);
}

TEST_CASE("after a clean close (WAL off) reopening finds the blocks and rebuilds usage and LRU order") {
  Env env;
  env.open(3);
  REQUIRE(put(*env.kv, {1, 2, 3}).ok());
  REQUIRE(get_checked(*env.kv, 1).ok());
  env.open(3);
  CHECK(env.kv->num_blocks() == 3);
  CHECK(env.kv->usage_bytes() == 3 * env.block_value_bytes);
  REQUIRE(put(*env.kv, {4}).ok());
  CHECK_FALSE(env.kv->contains(TestBlock(2).key));  // still the least recently used after restart
  CHECK(get_checked(*env.kv, 1).ok());
  CHECK(get_checked(*env.kv, 4).ok());
}

TEST_CASE("a block damaged on disk is reported as Corruption, deleted and counted, never returned") {
  Env env;
  env.open(10);
  REQUIRE(put(*env.kv, {1, 2}).ok());
  // Flip one payload byte of block 1 behind the store's back (same key layout as kv_store.h documents).
  std::string key(17, '\0');
  key[0] = 'b';
  BlockKey k = TestBlock(1).key;
  for (int i = 0; i < 8; ++i) {
    key[1 + i] = static_cast<char>(k.hi >> (56 - 8 * i));
    key[9 + i] = static_cast<char>(k.lo >> (56 - 8 * i));
  }
  rocksdb::ColumnFamilyHandle* cf = env.store->handle(ColumnFamily::kKv);
  std::string value;
  REQUIRE(env.store->db()->Get(rocksdb::ReadOptions(), cf, key, &value).ok());
  value[value.size() - 5] ^= 0x10;
  REQUIRE(env.store->db()->Put(rocksdb::WriteOptions(), cf, key, value).ok());

  CHECK(get_checked(*env.kv, 1).code() == StatusCode::kCorruption);
  CHECK_FALSE(env.kv->contains(TestBlock(1).key));
  CHECK(env.kv->counters().dropped_corrupt == 1);
  CHECK(env.kv->usage_bytes() == env.block_value_bytes);
  CHECK(get_checked(*env.kv, 1).code() == StatusCode::kNotFound);
  CHECK(get_checked(*env.kv, 2).ok());
}

TEST_CASE("blocks of another model are rejected and dropped after a fingerprint change") {
  Env env;
  env.open(10, "model-a");
  REQUIRE(put(*env.kv, {1}).ok());
  env.open(10, "model-b");
  CHECK(env.kv->contains(TestBlock(1).key));
  CHECK(get_checked(*env.kv, 1).code() == StatusCode::kFailedPrecondition);
  CHECK(env.kv->counters().dropped_mismatch == 1);
  CHECK_FALSE(env.kv->contains(TestBlock(1).key));
}

TEST_CASE("other tokens under the same key are refused but the block is kept") {
  Env env;
  env.open(10);
  REQUIRE(put(*env.kv, {1}).ok());
  std::vector<int32_t> other{9, 9, 9, 9};
  std::vector<std::byte> out(kLayout.block_bytes());
  CHECK(env.kv->get(TestBlock(1).key, other, out).code() == StatusCode::kFailedPrecondition);
  CHECK(get_checked(*env.kv, 1).ok());
}

TEST_CASE("concurrent writers and readers never see wrong bytes and keep the quota") {
  Env env;
  env.open(40);
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < 200; ++i) {
        uint64_t n = rng() % 80;
        if (t % 2 == 0) {
          TestBlock b(n);
          KvSpillBlock s = b.spill();
          if (!env.kv->put_batch({&s, 1}).ok()) ++wrong;
        } else {
          Status s = get_checked(*env.kv, n);
          if (!s.ok() && s.code() != StatusCode::kNotFound) ++wrong;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(wrong.load() == 0);
  CHECK(env.kv->usage_bytes() <= env.kv->quota_bytes());
  CHECK(env.kv->usage_bytes() == env.kv->num_blocks() * env.block_value_bytes);
}

TEST_CASE("get_batch reads many blocks in one call with the same answers as get") {
  Env env;
  env.open(100);
  REQUIRE(put(*env.kv, {1, 2, 3, 5}).ok());
  std::vector<TestBlock> want;
  for (uint64_t n : {3, 4, 1, 5, 2}) want.emplace_back(n);
  std::vector<std::vector<std::byte>> outs(want.size(), std::vector<std::byte>(kLayout.block_bytes()));
  std::vector<KvLoad> loads;
  for (size_t i = 0; i < want.size(); ++i) loads.push_back({want[i].key, want[i].tokens, outs[i]});
  std::vector<int32_t> wrong{7, 7, 7, 7};
  loads[4].tokens = wrong;  // block 2 under other token ids
  const std::vector<Status> got = env.kv->get_batch(loads);
  REQUIRE(got.size() == 5);
  CHECK(got[0].ok());
  CHECK(got[1].code() == StatusCode::kNotFound);
  CHECK(got[2].ok());
  CHECK(got[3].ok());
  CHECK(got[4].code() == StatusCode::kFailedPrecondition);
  CHECK(outs[0] == want[0].payload);
  CHECK(outs[2] == want[2].payload);
  CHECK(outs[3] == want[3].payload);
  CHECK(env.kv->counters().hits == 3);
  CHECK(env.kv->contains(TestBlock(2).key));  // a token mismatch keeps the block
}

TEST_CASE("the quota LRU never deletes a kept (pinned) block and refuses a write that only fits that way") {
  Env env;
  env.open(3);
  env.kv->set_keep([](const BlockKey& k) { return k == TestBlock(1).key || k == TestBlock(2).key; });
  REQUIRE(put(*env.kv, {1, 2, 3}).ok());
  REQUIRE(put(*env.kv, {4}).ok());  // evicts 3, the only block not kept
  CHECK_FALSE(env.kv->contains(TestBlock(3).key));
  for (uint64_t n : {1, 2, 4}) CHECK(get_checked(*env.kv, n).ok());
  CHECK(put(*env.kv, {5, 6}).code() == StatusCode::kResourceExhausted);  // would need 1 or 2 gone
  CHECK(env.kv->contains(TestBlock(4).key));                             // nothing changed
  CHECK_FALSE(env.kv->contains(TestBlock(5).key));
  CHECK(env.kv->counters().quota_refusals == 1);
  CHECK(env.kv->usage_bytes() <= env.kv->quota_bytes());
}

TEST_CASE("erase_batch deletes the present blocks once and reports how many") {
  Env env;
  env.open(100);
  REQUIRE(put(*env.kv, {1, 2, 3}).ok());
  const std::vector<BlockKey> keys{TestBlock(1).key, TestBlock(9).key, TestBlock(3).key, TestBlock(1).key};
  auto erased = env.kv->erase_batch(keys);
  REQUIRE(erased.ok());
  CHECK(*erased == 2);
  CHECK(env.kv->num_blocks() == 1);
  CHECK(env.kv->usage_bytes() == env.block_value_bytes);
  CHECK(env.kv->erased_since_reclaim() == 2 * env.block_value_bytes);
  CHECK(get_checked(*env.kv, 2).ok());
}

TEST_CASE("a put_batch stuck in a slow disk write does not block contains, get or the counters") {
  Env env;
  env.open(100);
  REQUIRE(put(*env.kv, {1}).ok());
  std::promise<void> entered;
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<bool> stall_next{true};
  env.kv->set_write_hook([&]() -> Status {
    if (stall_next.exchange(false)) {
      entered.set_value();
      released.wait();
    }
    return Status::ok_status();
  });
  auto writer = std::async(std::launch::async, [&] { return put(*env.kv, {2}); });
  entered.get_future().wait();  // the writer is inside its RocksDB write now

  struct Seen {
    bool has_1 = false, has_2 = true;
    Status got_1;
    uint64_t usage = 0;
    size_t blocks = 0;
  };
  auto reader = std::async(std::launch::async, [&] {
    Seen seen;
    seen.has_1 = env.kv->contains(TestBlock(1).key);
    seen.has_2 = env.kv->contains(TestBlock(2).key);
    seen.got_1 = get_checked(*env.kv, 1);
    seen.usage = env.kv->usage_bytes();
    seen.blocks = env.kv->num_blocks();
    (void)env.kv->counters();
    return seen;
  });
  // Not a timing assertion: a reader that waits for the stalled writer never finishes, however long.
  const bool reader_done = reader.wait_for(std::chrono::seconds(30)) == std::future_status::ready;
  release.set_value();
  CHECK(reader_done);
  const Seen seen = reader.get();
  CHECK(seen.has_1);
  CHECK_FALSE(seen.has_2);  // not indexed before it is in the database
  CHECK(seen.got_1.ok());
  CHECK(seen.usage == env.block_value_bytes);
  CHECK(seen.blocks == 1);
  REQUIRE(writer.get().ok());
  CHECK(env.kv->contains(TestBlock(2).key));
  CHECK(env.kv->usage_bytes() == 2 * env.block_value_bytes);
}

std::string record(char prefix, const BlockKey& k) {
  std::string key(17, '\0');
  key[0] = prefix;
  for (int i = 0; i < 8; ++i) {
    key[1 + i] = static_cast<char>(k.hi >> (56 - 8 * i));
    key[9 + i] = static_cast<char>(k.lo >> (56 - 8 * i));
  }
  return key;
}

TEST_CASE("concurrent puts, erases, gets and contains keep the index equal to the database") {
  Env env;
  env.open(20);  // 60 distinct blocks over a 20-block quota: puts evict all the time
  constexpr uint64_t kKeys = 60;
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(100 + t);
      for (int i = 0; i < 300; ++i) {
        const uint64_t n = rng() % kKeys;
        if (t < 2) {
          std::vector<TestBlock> blocks;
          for (uint64_t j = 0; j <= rng() % 3; ++j) blocks.emplace_back((n + j) % kKeys);
          std::vector<KvSpillBlock> spills;
          for (const auto& b : blocks) spills.push_back(b.spill());
          if (!env.kv->put_batch(spills, i % 7 == 0 ? Durability::kLogged : Durability::kCache).ok())
            ++errors;
        } else if (t == 2) {
          const std::vector<BlockKey> keys{TestBlock(n).key, TestBlock((n + 1) % kKeys).key};
          if (!env.kv->erase_batch(keys).ok()) ++errors;
          if (i % 50 == 0 && !env.kv->make_durable(keys).ok()) ++errors;
        } else {
          (void)env.kv->contains(TestBlock(n).key);
          const Status s = get_checked(*env.kv, n);
          if (!s.ok() && s.code() != StatusCode::kNotFound) ++errors;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(errors.load() == 0);

  rocksdb::ColumnFamilyHandle* cf = env.store->handle(ColumnFamily::kKv);
  size_t stored = 0;
  for (uint64_t n = 0; n < kKeys; ++n) {
    CAPTURE(n);
    std::string value;
    const bool has_block =
        env.store->db()->Get(rocksdb::ReadOptions(), cf, record('b', TestBlock(n).key), &value).ok();
    const bool has_meta =
        env.store->db()->Get(rocksdb::ReadOptions(), cf, record('m', TestBlock(n).key), &value).ok();
    CHECK(has_block == has_meta);
    CHECK(env.kv->contains(TestBlock(n).key) == has_block);
    stored += has_block ? 1 : 0;
  }
  size_t records = 0;
  std::unique_ptr<rocksdb::Iterator> it(env.store->db()->NewIterator(rocksdb::ReadOptions(), cf));
  for (it->SeekToFirst(); it->Valid(); it->Next()) ++records;
  CHECK(records == 2 * stored);  // nothing stray beside the candidates
  CHECK(env.kv->num_blocks() == stored);
  CHECK(env.kv->usage_bytes() == stored * env.block_value_bytes);
  CHECK(env.kv->usage_bytes() <= env.kv->quota_bytes());
  // The index a restart rebuilds from the database is the one the store kept.
  auto reopened = KvStore::open(*env.store, env.format, env.kv->quota_bytes());
  REQUIRE(reopened.ok());
  CHECK((*reopened)->num_blocks() == stored);
  CHECK((*reopened)->usage_bytes() == env.kv->usage_bytes());
}

TEST_CASE("LRU evictions do not count toward reclaim; erases and dropped blocks do") {
  Env env;
  env.open(3);
  REQUIRE(put(*env.kv, {1, 2, 3}).ok());
  REQUIRE(put(*env.kv, {4, 5}).ok());  // evicts 1 and 2
  CHECK(env.kv->counters().evictions == 2);
  CHECK(env.kv->erased_since_reclaim() == 0);
  REQUIRE(env.kv->erase(TestBlock(4).key).ok());
  CHECK(env.kv->erased_since_reclaim() == env.block_value_bytes);
  // A block of another model is dropped on read: that counts as well.
  env.open(3, "model-b");
  CHECK(get_checked(*env.kv, 5).code() == StatusCode::kFailedPrecondition);
  CHECK(env.kv->erased_since_reclaim() == env.block_value_bytes);
}

// A copy of the database folder taken while the store is open is what a kill -9 at that moment leaves:
// the memtable is gone, the WAL and the flushed files stay.
std::unique_ptr<RocksDbStore> open_crash_copy(const Env& env, const std::filesystem::path& to) {
  std::filesystem::copy(env.dir.path / "db", to, std::filesystem::copy_options::recursive);
  auto s = RocksDbStore::open(StoreOptions{.path = to.string()});
  REQUIRE_MESSAGE(s.ok(), s.status().to_string());
  return std::move(s).value();
}

TEST_CASE("make_durable syncs WAL-less blocks through the WAL again instead of flushing the memtable") {
  Env env;
  env.open(100);
  REQUIRE(put(*env.kv, {1, 2}).ok());  // cache writes: WAL-less, in the memtable only
  TestBlock logged(3);
  KvSpillBlock spill = logged.spill();
  REQUIRE(env.kv->put_batch({&spill, 1}, Durability::kLogged).ok());
  const std::vector<BlockKey> chain{TestBlock(1).key, TestBlock(3).key};
  REQUIRE(env.kv->make_durable(chain).ok());
  uint64_t memtable_entries = 0;
  REQUIRE(env.store->db()->GetIntProperty(env.store->handle(ColumnFamily::kKv),
                                          "rocksdb.num-entries-active-mem-table", &memtable_entries));
  CHECK(memtable_entries > 0);                // no flush ran
  REQUIRE(env.kv->make_durable(chain).ok());  // nothing volatile left: a no-op

  const std::filesystem::path copy = env.dir.path / "crash";
  std::unique_ptr<RocksDbStore> crashed = open_crash_copy(env, copy);
  auto kv = KvStore::open(*crashed, env.format, env.kv->quota_bytes());
  REQUIRE(kv.ok());
  CHECK(get_checked(**kv, 1).ok());
  CHECK(get_checked(**kv, 3).ok());
  CHECK_FALSE((*kv)->contains(TestBlock(2).key));  // never made durable: lost, as a cache write may be
  CHECK((*kv)->num_blocks() == 2);
}

TEST_CASE("make_durable flushes instead once the WAL-less blocks to rewrite pass a memtable's worth") {
  Env env;
  env.open(100, "model-a", /*write_buffer_bytes=*/2 * kv_block_encoded_size(kLayout.block_size,
                                                                            kLayout.block_bytes()));
  REQUIRE(put(*env.kv, {1, 2, 3}).ok());  // three WAL-less blocks: more than the memtable holds
  const std::vector<BlockKey> chain{TestBlock(1).key, TestBlock(2).key, TestBlock(3).key};
  REQUIRE(env.kv->make_durable(chain).ok());
  uint64_t memtable_entries = 1;
  REQUIRE(env.store->db()->GetIntProperty(env.store->handle(ColumnFamily::kKv),
                                          "rocksdb.num-entries-active-mem-table", &memtable_entries));
  CHECK(memtable_entries == 0);  // flushed, not rewritten
  std::unique_ptr<RocksDbStore> crashed = open_crash_copy(env, env.dir.path / "crash");
  auto kv = KvStore::open(*crashed, env.format, env.kv->quota_bytes());
  REQUIRE(kv.ok());
  for (uint64_t n : {1, 2, 3}) CHECK(get_checked(**kv, n).ok());
}

uintmax_t folder_bytes(const std::filesystem::path& dir) {
  uintmax_t total = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) total += e.file_size();
  }
  return total;
}

TEST_CASE("LRU churn far past the quota keeps the folder near it without reclaim (RocksDB's blob GC)") {
  // 128 KiB blocks in blob files, a 1 MiB memtable so that flushes and compactions happen as they would
  // at full size, and 64 MiB written through a 4 MiB quota: 60 MiB of evicted blocks.
  const KvLayout big{.n_layers = 4, .n_kv_heads = 4, .head_dim = 64, .block_size = 16};
  TempDir dir;
  StoreOptions options{.path = (dir.path / "db").string()};
  options.kv_write_buffer_bytes = 1 << 20;
  auto store = RocksDbStore::open(options);
  REQUIRE_MESSAGE(store.ok(), store.status().to_string());
  const uint64_t quota = uint64_t{4} << 20;
  auto kv = KvStore::open(**store, KvBlockFormat::make("m", big), quota);
  REQUIRE_MESSAGE(kv.ok(), kv.status().to_string());
  std::vector<int32_t> tokens(16, 5);
  std::vector<std::byte> payload(big.block_bytes());
  std::mt19937_64 rng(2);
  for (auto& b : payload) b = static_cast<std::byte>(rng());
  for (uint64_t n = 0; n < 512; n += 8) {
    std::vector<KvSpillBlock> batch;
    for (uint64_t i = n; i < n + 8; ++i) batch.push_back({{i + 1, i * 13 + 5}, tokens, payload});
    REQUIRE((*kv)->put_batch(batch).ok());
  }
  rocksdb::DB* db = (*store)->db();
  REQUIRE(db->Flush(rocksdb::FlushOptions(), (*store)->handle(ColumnFamily::kKv)).ok());
  // Let the background compactions the writes scheduled finish (no reclaim, no manual compaction).
  for (int i = 0; i < 600; ++i) {
    uint64_t pending = 0, running = 0;
    REQUIRE(db->GetIntProperty("rocksdb.compaction-pending", &pending));
    REQUIRE(db->GetIntProperty("rocksdb.num-running-compactions", &running));
    if (pending == 0 && running == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const uintmax_t folder = folder_bytes(dir.path);
  MESSAGE("kv folder after 64 MiB through a 4 MiB quota: " << folder / 1024 << " KiB");
  CHECK((*kv)->counters().evictions >= 480);
  CHECK((*kv)->erased_since_reclaim() == 0);
  CHECK((*kv)->counters().reclaims == 0);
  CHECK(folder < 4 * quota);
}

TEST_CASE("reclaim gives the disk space of deleted blocks back (blob files collected)") {
  // Blocks of 128 KiB, so they live in blob files as real KV does.
  const KvLayout big{.n_layers = 4, .n_kv_heads = 4, .head_dim = 64, .block_size = 16};
  TempDir dir;
  auto store = RocksDbStore::open(StoreOptions{.path = (dir.path / "db").string()});
  REQUIRE_MESSAGE(store.ok(), store.status().to_string());
  auto kv = KvStore::open(**store, KvBlockFormat::make("m", big), uint64_t{1} << 30);
  REQUIRE_MESSAGE(kv.ok(), kv.status().to_string());
  std::vector<int32_t> tokens(16, 5);
  std::vector<std::byte> payload(big.block_bytes());
  std::mt19937_64 rng(1);
  for (auto& b : payload) b = static_cast<std::byte>(rng());
  std::vector<BlockKey> keys;
  for (uint64_t n = 0; n < 256; n += 32) {
    std::vector<KvSpillBlock> batch;
    for (uint64_t i = n; i < n + 32; ++i) {
      keys.push_back({i + 1, i * 7 + 3});
      batch.push_back({keys.back(), tokens, payload});
    }
    REQUIRE((*kv)->put_batch(batch).ok());
  }
  REQUIRE((*kv)->reclaim().ok());  // flushes the memtable into blob files
  const uintmax_t written = folder_bytes(dir.path);
  CHECK(written > 256 * big.block_bytes());

  // Keep one block in eight: 7/8 of the bytes are garbage.
  std::vector<BlockKey> doomed;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (i % 8 != 0) doomed.push_back(keys[i]);
  }
  REQUIRE((*kv)->erase_batch(doomed).ok());
  REQUIRE((*kv)->reclaim().ok());
  const uintmax_t after = folder_bytes(dir.path);
  MESSAGE("kv folder: " << written / 1024 << " KiB with 256 blocks, " << after / 1024
                        << " KiB after deleting 224 and reclaim");
  CHECK(after < written / 3);
  CHECK((*kv)->erased_since_reclaim() == 0);
  CHECK((*kv)->counters().reclaims == 2);
  std::vector<std::byte> out(big.block_bytes());
  CHECK((*kv)->get(keys[8], tokens, out).ok());
  CHECK(out == payload);
}

}  // namespace
}  // namespace agentserve::memory
