// A real ModerationClient for tests: one io thread for its HTTP client, stats to read back, and a clean stop
// (the client goes before the io thread is joined, so no callback runs into a destroyed test).
#pragma once

#include <doctest/doctest.h>

#include <memory>
#include <optional>
#include <thread>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include "agent/moderation_client.h"

namespace agentserve::agent::testing {

struct ModerationClientHarness {
  ModerationClientHarness() {
    thread = std::thread([this] { io.run(); });
  }
  ~ModerationClientHarness() {
    client.reset();
    work.reset();
    thread.join();
  }

  // Replaces the client with one made from `options`.
  void connect(const ModerationOptions& options) {
    auto created = ModerationClient::create(http, options, &stats);
    REQUIRE_MESSAGE(created.ok(), created.status().to_string());
    client = std::move(created).value();
  }

  boost::asio::io_context io;
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work{
      io.get_executor()};
  net::HttpClient http{io};
  ModerationStats stats;
  std::unique_ptr<ModerationClient> client;
  std::thread thread;
};

}  // namespace agentserve::agent::testing
