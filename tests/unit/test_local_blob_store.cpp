#include <catch2/catch.hpp>

#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "stores/local_blob_store.hpp"

namespace fs = std::filesystem;
using gv::stores::BlobError;
using gv::stores::BlobPage;
using gv::stores::LocalBlobStore;
using gv::stores::valid_blob_key;

namespace {

// A fresh folder under /tmp, removed with everything in it at scope exit.
// Tests put the store in sandbox/root so that sandbox/ shows any escape.
struct Sandbox {
  fs::path dir;
  Sandbox() {
    char pattern[] = "/tmp/gv-blob-test-XXXXXX";
    REQUIRE(::mkdtemp(pattern) != nullptr);
    dir = pattern;
  }
  ~Sandbox() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  fs::path root() const { return dir / "root"; }
};

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << bytes;
}

// Every path below dir (files, folders, links), relative to it.
std::set<std::string> tree(const fs::path& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    out.insert(fs::relative(e.path(), dir).string());
  return out;
}

std::vector<std::string> all_keys(LocalBlobStore& store, std::string_view prefix = "",
                                  size_t page_size = 0) {
  std::vector<std::string> keys;
  std::string after;
  while (true) {
    auto r = store.list(prefix, after, page_size);
    REQUIRE(r.ok());
    keys.insert(keys.end(), r.value.keys.begin(), r.value.keys.end());
    if (!r.value.truncated) return keys;
    after = r.value.next_start_after;
  }
}

}  // namespace

TEST_CASE("blob keys: the rules shared with S3", "[blobs]") {
  std::string why;
  CHECK(valid_blob_key("a"));
  CHECK(valid_blob_key("avatars/u1/original.png"));
  CHECK(valid_blob_key("caf\xC3\xA9/\xF0\x9F\x98\x80"));  // é and an emoji
  CHECK(valid_blob_key("a/.hidden/..x/x.."));
  CHECK(valid_blob_key(std::string(1024, 'k')));

  for (const std::string& bad :
       {std::string(""), std::string("/abs"), std::string("a/"), std::string("a//b"),
        std::string("."), std::string(".."), std::string("../x"), std::string("a/../../x"),
        std::string("a/./b"), std::string("a\\b"), std::string("a\0b", 3), std::string("a\nb"),
        std::string("a\x7F"), std::string("a\xC2\x85"),  // U+0085
        std::string("\xC0\xAF"),                         // overlong '/'
        std::string("\xED\xA0\x80"),                     // surrogate
        std::string("\xF4\x90\x80\x80"),                 // beyond U+10FFFF
        std::string("\xE2\x82"),                         // truncated
        std::string(1025, 'k')}) {
    INFO("key: " << bad);
    why.clear();
    CHECK_FALSE(valid_blob_key(bad, &why));
    CHECK_FALSE(why.empty());
  }
}

TEST_CASE("local blobs: put, get, overwrite, exists, del", "[blobs]") {
  Sandbox box;
  LocalBlobStore store(box.root());
  REQUIRE(store.open_status().ok());

  auto missing = store.get("nothing/here");
  REQUIRE(missing.ok());
  CHECK_FALSE(missing.value.has_value());
  CHECK_FALSE(store.exists("nothing/here").value);

  REQUIRE(store.put("posts/42/cover.jpg", "first").ok());
  CHECK(read_file(box.root() / "posts/42/cover.jpg") == "first");
  CHECK(store.get("posts/42/cover.jpg").value == std::optional<std::string>("first"));
  CHECK(store.exists("posts/42/cover.jpg").value);
  CHECK_FALSE(store.exists("posts/42").value);  // a folder is not an object

  REQUIRE(store.put("posts/42/cover.jpg", "second, longer").ok());
  CHECK(store.get("posts/42/cover.jpg").value == std::optional<std::string>("second, longer"));
  REQUIRE(store.put("posts/42/cover.jpg", "").ok());  // empty objects are fine
  CHECK(store.get("posts/42/cover.jpg").value == std::optional<std::string>(""));

  SECTION("binary content keeps every byte, NULs included") {
    std::string bytes;
    for (int i = 0; i < 3 * 65536 + 7; ++i) bytes += static_cast<char>(i * 31 % 256);
    bytes += std::string(5, '\0');
    REQUIRE(store.put("bin", bytes).ok());
    auto got = store.get("bin");
    REQUIRE(got.value.has_value());
    CHECK(*got.value == bytes);
  }

  SECTION("del removes the object and prunes the folders it leaves empty") {
    REQUIRE(store.put("posts/42/thumb.jpg", "t").ok());
    REQUIRE(store.put("posts/7/a/b/c", "deep").ok());
    CHECK(store.del("posts/42/cover.jpg").value);
    CHECK_FALSE(store.del("posts/42/cover.jpg").value);  // already gone
    CHECK(fs::is_directory(box.root() / "posts/42"));    // thumb is still there
    CHECK(store.del("posts/42/thumb.jpg").value);
    CHECK_FALSE(fs::exists(box.root() / "posts/42"));
    CHECK(store.del("posts/7/a/b/c").value);
    CHECK_FALSE(fs::exists(box.root() / "posts"));
    CHECK(fs::is_directory(box.root()));  // never the root
    CHECK(tree(box.root()).empty());
  }

  SECTION("a key cannot be both an object and a folder of objects") {
    auto r = store.put("posts/42/cover.jpg/x", "x");
    CHECK(r.code == BlobError::conflict);
    CHECK(store.put("posts/42", "x").code == BlobError::conflict);
    CHECK(store.get("posts/42/cover.jpg").value == std::optional<std::string>(""));
    CHECK_FALSE(store.get("posts/42/cover.jpg/x").value.has_value());
    CHECK_FALSE(store.del("posts/42").value);
    CHECK(fs::is_directory(box.root() / "posts/42"));
  }
}

TEST_CASE("local blobs: list by prefix, in key order, with paging", "[blobs]") {
  Sandbox box;
  LocalBlobStore store(box.root());
  std::vector<std::string> keys;
  for (int i = 0; i < 25; ++i) keys.push_back("m/" + std::to_string(100 + i));
  // Byte order, not a per-folder order: "a-c" < "a/b" < "a0" because
  // '-' < '/' < '0'.
  for (const char* k : {"a-c", "a/b", "a/b/c-no", "a0", "b", "z/y/x"}) keys.push_back(k);
  keys.erase(std::find(keys.begin(), keys.end(), "a/b"));  // "a/b" is a folder here
  for (const auto& k : keys) REQUIRE(store.put(k, "v:" + k).ok());
  std::sort(keys.begin(), keys.end());

  CHECK(all_keys(store) == keys);
  CHECK(all_keys(store, "", 1) == keys);
  CHECK(all_keys(store, "", 7) == keys);

  SECTION("a page holds at most limit keys and points at the next") {
    auto first = store.list("m/", "", 10);
    REQUIRE(first.ok());
    CHECK(first.value.keys.size() == 10);
    CHECK(first.value.keys.front() == "m/100");
    CHECK(first.value.truncated);
    CHECK(first.value.next_start_after == "m/109");
    auto second = store.list("m/", first.value.next_start_after, 10);
    CHECK(second.value.keys.front() == "m/110");
    auto third = store.list("m/", second.value.next_start_after, 10);
    CHECK(third.value.keys.size() == 5);
    CHECK_FALSE(third.value.truncated);
    CHECK(third.value.next_start_after.empty());
    auto exact = store.list("m/", "", 25);  // exactly full: not truncated
    CHECK(exact.value.keys.size() == 25);
    CHECK_FALSE(exact.value.truncated);
  }

  SECTION("prefix is a plain byte prefix, as in S3") {
    CHECK(all_keys(store, "m/11") == std::vector<std::string>{"m/110", "m/111", "m/112", "m/113",
                                                              "m/114", "m/115", "m/116", "m/117",
                                                              "m/118", "m/119"});
    CHECK(all_keys(store, "a") == std::vector<std::string>{"a-c", "a/b/c-no", "a0"});
    CHECK(all_keys(store, "a/") == std::vector<std::string>{"a/b/c-no"});
    CHECK(all_keys(store, "z/y/x") == std::vector<std::string>{"z/y/x"});
    CHECK(all_keys(store, "nope").empty());
    CHECK(all_keys(store, "../").empty());  // never a path: cannot escape
  }

  SECTION("start_after need not be a stored key") {
    auto r = store.list("", "m/1205", 3);
    CHECK(r.value.keys == std::vector<std::string>{"m/121", "m/122", "m/123"});
    r = store.list("", "a/b", 2);
    CHECK(r.value.keys == std::vector<std::string>{"a/b/c-no", "a0"});
    r = store.list("", "zz", 5);
    CHECK(r.value.keys.empty());
    CHECK_FALSE(r.value.truncated);
  }

  SECTION("limit 0 or above the maximum means the maximum") {
    for (int i = 0; i < 1001; ++i) REQUIRE(store.put("n/" + std::to_string(10000 + i), "").ok());
    CHECK(store.list("n/", "", 0).value.keys.size() == 1000);
    CHECK(store.list("n/", "", 5000).value.keys.size() == 1000);
    CHECK(store.list("n/", "", 5000).value.truncated);
  }
}

TEST_CASE("local blobs: keys that would escape or break the rules are refused", "[blobs]") {
  Sandbox box;
  LocalBlobStore store(box.root());
  REQUIRE(store.put("ok", "v").ok());
  const std::string abs = "/tmp/gv-blob-escape-" + std::to_string(::getpid());

  for (const std::string& key :
       {std::string("../x"), std::string("a/../../x"), std::string(".."), abs, std::string("a//b"),
        std::string("a/./b"), std::string("a\\b"), std::string("..\\x"), std::string("a\0b", 3),
        std::string(""), std::string("a/"), std::string(1025, 'k'),
        std::string(256, 's'),  // segment over NAME_MAX
        std::string(LocalBlobStore::kTempPrefix) + "x",
        "a/" + std::string(LocalBlobStore::kTempPrefix) + "x"}) {
    INFO("key: " << key);
    auto put = store.put(key, "escaped");
    CHECK(put.code == BlobError::invalid_key);
    CHECK_FALSE(put.message.empty());
    CHECK(store.get(key).status.code == BlobError::invalid_key);
    CHECK(store.exists(key).status.code == BlobError::invalid_key);
    CHECK(store.del(key).status.code == BlobError::invalid_key);
  }
  CHECK(tree(box.dir) == std::set<std::string>{"root", "root/ok"});
  CHECK_FALSE(fs::exists(abs));
  CHECK(store.put(std::string(255, 's'), "longest segment").ok());
}

TEST_CASE("local blobs: symlinks planted inside the root are not followed", "[blobs]") {
  Sandbox box;
  const fs::path outside = box.dir / "outside";
  write_file(outside / "secret", "top secret");
  LocalBlobStore store(box.root());
  fs::create_directory_symlink(outside, box.root() / "link");
  fs::create_symlink(outside / "secret", box.root() / "file-link");

  CHECK_FALSE(store.get("link/secret").value.has_value());
  CHECK_FALSE(store.exists("link/secret").value);
  CHECK_FALSE(store.get("file-link").value.has_value());
  CHECK(all_keys(store).empty());

  CHECK(store.put("link/new", "x").code == BlobError::conflict);
  CHECK(store.put("link/secret", "overwritten").code == BlobError::conflict);
  CHECK_FALSE(store.del("link/secret").value);
  CHECK_FALSE(store.del("file-link").value);
  CHECK(tree(outside) == std::set<std::string>{"secret"});
  CHECK(read_file(outside / "secret") == "top secret");

  // A put at the link's own name replaces the link, never writes through it.
  REQUIRE(store.put("file-link", "mine").ok());
  CHECK_FALSE(fs::is_symlink(box.root() / "file-link"));
  CHECK(store.get("file-link").value == std::optional<std::string>("mine"));
  CHECK(read_file(outside / "secret") == "top secret");
}

TEST_CASE("local blobs: temp files left by a crash are invisible and cleaned", "[blobs]") {
  Sandbox box;
  const std::string tmp(LocalBlobStore::kTempPrefix);
  {
    LocalBlobStore store(box.root());
    REQUIRE(store.put("a/b", "whole").ok());
  }
  // What a kill between create and rename leaves: partial temp files, and
  // a folder made for a put that never finished.
  write_file(box.root() / "a" / (tmp + "0123456789abcdef"), "par");
  write_file(box.root() / (tmp + "fedcba9876543210"), "tial");
  write_file(box.root() / "never/finished" / (tmp + "00"), "x");

  LocalBlobStore reopened(box.root());
  CHECK(all_keys(reopened) == std::vector<std::string>{"a/b"});
  CHECK(reopened.get("a/b").value == std::optional<std::string>("whole"));
  CHECK(tree(box.root()) == std::set<std::string>{"a", "a/b"});
}

TEST_CASE("local blobs: temp files written after start-up are invisible to list", "[blobs]") {
  Sandbox box;
  LocalBlobStore store(box.root());
  REQUIRE(store.put("a/b", "whole").ok());
  const std::string tmp(LocalBlobStore::kTempPrefix);
  write_file(box.root() / "a" / (tmp + "0123456789abcdef"), "partial");
  write_file(box.root() / (tmp + "folder") / "x", "made by hand");
  CHECK(all_keys(store) == std::vector<std::string>{"a/b"});
  CHECK(store.get("a/" + tmp + "0123456789abcdef").status.code == BlobError::invalid_key);
}

TEST_CASE("local blobs: concurrent writers of one key leave one whole value", "[blobs]") {
  Sandbox box;
  LocalBlobStore store(box.root());
  constexpr int kWriters = 4;
  constexpr size_t kSize = 1 << 20;
  auto value_of = [](int writer) { return std::string(kSize, static_cast<char>('A' + writer)); };
  REQUIRE(store.put("shared/key", value_of(0)).ok());

  std::atomic<bool> stop{false};
  std::atomic<int> torn_reads{0}, failures{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      const std::string mine = value_of(w);
      for (int i = 0; i < 10; ++i) {
        if (!store.put("shared/key", mine).ok()) ++failures;
        if (!store.put("own/" + std::to_string(w), mine).ok()) ++failures;
      }
    });
  }
  // A reader checks that every value it sees is one writer's, entire.
  std::thread reader([&] {
    while (!stop) {
      auto r = store.get("shared/key");
      if (!r.ok() || !r.value) {
        ++failures;
        continue;
      }
      const std::string& v = *r.value;
      if (v.size() != kSize || v.find_first_not_of(v[0]) != std::string::npos) ++torn_reads;
    }
  });
  for (auto& t : threads) t.join();
  stop = true;
  reader.join();

  CHECK(failures == 0);
  CHECK(torn_reads == 0);
  auto final_value = store.get("shared/key");
  REQUIRE(final_value.value.has_value());
  bool matches_one = false;
  for (int w = 0; w < kWriters; ++w) matches_one |= *final_value.value == value_of(w);
  CHECK(matches_one);
  for (int w = 0; w < kWriters; ++w)
    CHECK(store.get("own/" + std::to_string(w)).value == std::optional<std::string>(value_of(w)));
  // No temp file is left behind by a finished put.
  CHECK(tree(box.root()) ==
        std::set<std::string>{"own", "own/0", "own/1", "own/2", "own/3", "shared", "shared/key"});
}

TEST_CASE("local blobs: concurrent put and del in one folder never fail a put", "[blobs]") {
  Sandbox box;
  LocalBlobStore store(box.root());
  std::atomic<int> failures{0};
  std::mutex mutex;
  std::string first_failure;
  auto failed = [&](const std::string& what) {
    std::lock_guard lock(mutex);
    if (failures++ == 0) first_failure = what;
  };
  // Deletes prune the folder while puts create objects inside it: a put
  // must re-create a folder pruned under it rather than fail.
  auto worker = [&](int id) {
    for (int i = 0; i < 300; ++i) {
      const std::string key = "d/e/" + std::to_string(id);
      if (auto s = store.put(key, "v"); !s.ok()) failed("put: " + s.message);
      if (auto r = store.del(key); !r.status.ok()) failed("del: " + r.status.message);
    }
  };
  std::thread a(worker, 1), b(worker, 2), c(worker, 3);
  a.join(), b.join(), c.join();
  INFO(first_failure);
  CHECK(failures == 0);
  CHECK(tree(box.root()).empty());
}

TEST_CASE("local blobs: a root that cannot be opened reports it on every call", "[blobs]") {
  Sandbox box;
  write_file(box.dir / "file", "not a folder");
  LocalBlobStore store(box.dir / "file" / "root");
  CHECK(store.open_status().code == BlobError::io_error);
  CHECK(store.put("a", "b").code == BlobError::io_error);
  CHECK(store.get("a").status.code == BlobError::io_error);
  CHECK(store.list("", "", 10).status.code == BlobError::io_error);
}
