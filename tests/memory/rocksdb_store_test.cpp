#include "memory/rocksdb_store.h"

#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace agentserve::memory {
namespace {

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "as-rocksdb-XXXXXX").string();
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

StoreOptions options_at(const std::filesystem::path& p) {
  StoreOptions o;
  o.path = p.string();
  return o;
}

TEST_CASE("open creates the database with all column families and reopens it with the data") {
  TempDir dir;
  {
    auto store = RocksDbStore::open(options_at(dir.path / "db"));
    REQUIRE_MESSAGE(store.ok(), store.status().to_string());
    for (int i = 0; i < kNumColumnFamilies; ++i) {
      auto cf = static_cast<ColumnFamily>(i);
      REQUIRE((*store)->handle(cf) != nullptr);
      CHECK((*store)->handle(cf)->GetName() == column_family_name(cf));
      REQUIRE(
          (*store)->db()->Put(rocksdb::WriteOptions(), (*store)->handle(cf), "k", std::to_string(i)).ok());
    }
  }
  auto store = RocksDbStore::open(options_at(dir.path / "db"));
  REQUIRE_MESSAGE(store.ok(), store.status().to_string());
  for (int i = 0; i < kNumColumnFamilies; ++i) {
    std::string v;
    REQUIRE((*store)
                ->db()
                ->Get(rocksdb::ReadOptions(), (*store)->handle(static_cast<ColumnFamily>(i)), "k", &v)
                .ok());
    CHECK(v == std::to_string(i));  // families are separate key spaces
  }
}

TEST_CASE("kv family stores large values in blob files without compression") {
  TempDir dir;
  auto store = RocksDbStore::open(options_at(dir.path / "db"));
  REQUIRE(store.ok());
  rocksdb::DB* db = (*store)->db();
  std::string big(64 << 10, 'x');
  REQUIRE(db->Put(rocksdb::WriteOptions(), (*store)->handle(ColumnFamily::kKv), "big", big).ok());
  REQUIRE(db->Flush(rocksdb::FlushOptions(), (*store)->handle(ColumnFamily::kKv)).ok());
  bool has_blob = false;
  for (const auto& e : std::filesystem::directory_iterator(dir.path / "db")) {
    if (e.path().extension() == ".blob") has_blob = e.file_size() >= big.size();
  }
  CHECK(has_blob);
  std::string v;
  REQUIRE(db->Get(rocksdb::ReadOptions(), (*store)->handle(ColumnFamily::kKv), "big", &v).ok());
  CHECK(v == big);
}

TEST_CASE("a path that cannot be created is an IoError") {
  TempDir dir;
  std::ofstream(dir.path / "file") << "not a folder";
  auto store = RocksDbStore::open(options_at(dir.path / "file" / "db"));
  REQUIRE_FALSE(store.ok());
  CHECK(store.status().code() == StatusCode::kIoError);
  CHECK(RocksDbStore::open(StoreOptions{}).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("a database already open is refused as FailedPrecondition, not crashed on") {
  TempDir dir;
  auto first = RocksDbStore::open(options_at(dir.path / "db"));
  REQUIRE(first.ok());
  auto second = RocksDbStore::open(options_at(dir.path / "db"));
  REQUIRE_FALSE(second.ok());
  CHECK(second.status().code() == StatusCode::kFailedPrecondition);
}

TEST_CASE("a damaged CURRENT file is reported as Corruption") {
  TempDir dir;
  { REQUIRE(RocksDbStore::open(options_at(dir.path / "db")).ok()); }
  std::ofstream(dir.path / "db" / "CURRENT", std::ios::trunc) << "garbage";
  auto store = RocksDbStore::open(options_at(dir.path / "db"));
  REQUIRE_FALSE(store.ok());
  CHECK_MESSAGE(store.status().code() == StatusCode::kCorruption, store.status().to_string());
}

}  // namespace
}  // namespace agentserve::memory
