#include "net/url.h"

#include <doctest/doctest.h>

using agentserve::net::Url;

TEST_CASE("url parse fills default ports and target") {
  auto a = Url::parse("http://Example.COM");
  REQUIRE(a.ok());
  CHECK(a->scheme == "http");
  CHECK(a->host == "example.com");
  CHECK(a->port == 80);
  CHECK(a->target == "/");
  CHECK(a->host_header() == "example.com");

  auto b = Url::parse("HTTPS://api.example.com:8443/v1/moderations?x=1#frag");
  REQUIRE(b.ok());
  CHECK(b->scheme == "https");
  CHECK(b->port == 8443);
  CHECK(b->target == "/v1/moderations?x=1");
  CHECK(b->host_header() == "api.example.com:8443");
  CHECK(b->is_tls());

  auto c = Url::parse("https://h?q=2");
  REQUIRE(c.ok());
  CHECK(c->port == 443);
  CHECK(c->target == "/?q=2");
}

TEST_CASE("url parse keeps IPv6 literals without brackets and puts them back in the Host header") {
  auto u = Url::parse("http://[::1]:9000/x");
  REQUIRE(u.ok());
  CHECK(u->host == "::1");
  CHECK(u->port == 9000);
  CHECK(u->host_header() == "[::1]:9000");
}

TEST_CASE("url parse refuses what could send a request somewhere unexpected") {
  for (const char* bad :
       {"ftp://example.com/", "example.com/path", "http://", "http:///path", "http://user:pw@example.com/",
        "http://allowed.example@evil.example/", "http://example.com:0/", "http://example.com:65536/",
        "http://example.com:99999999/", "http://example.com:/", "http://example.com:8o/",
        "http://exa mple.com/", "http://example.com/a\r\nHost: evil", "http://[::1/", "http://[zz]/",
        "http://exa%6dple.com/"}) {
    CAPTURE(bad);
    auto u = Url::parse(bad);
    REQUIRE_FALSE(u.ok());
    CHECK(u.status().code() == agentserve::StatusCode::kInvalidArgument);
  }
}
