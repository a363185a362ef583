// Runs the real agentserve binary: `tokenize` and `detokenize` against Qwen3's tokenizer.
#include <doctest/doctest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>
#include <vector>

namespace {

struct Run {
  int exit_code;
  std::string out;
};

std::string shell_quote(const std::string& arg) {
  std::string quoted = "'";
  for (const char c : arg) {
    if (c == '\'') {
      quoted += "'\\''";
    } else {
      quoted += c;
    }
  }
  quoted += '\'';
  return quoted;
}

Run run(const std::vector<std::string>& args) {
  std::string command = shell_quote(AGENTSERVE_BINARY);
  for (const auto& arg : args) {
    command += ' ';
    command += shell_quote(arg);
  }
  command += " 2>/dev/null";
  FILE* pipe = popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::string out;
  std::array<char, 4096> buffer;
  for (std::size_t n; (n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0;)
    out.append(buffer.data(), n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

const std::string kModel = AGENTSERVE_TOKENIZER_DIR;

TEST_CASE("tokenize prints the ids as a JSON array; special tokens parse unless --no-special") {
  const Run hello = run({"tokenize", "--model", kModel, "--text", "Hello world"});
  CHECK(hello.exit_code == 0);
  CHECK(hello.out == "[9707,1879]\n");
  const Run special = run({"tokenize", "--model", kModel, "--text", "<|im_end|>"});
  CHECK(special.out == "[151645]\n");
  const Run as_text = run({"tokenize", "--model", kModel, "--text", "<|im_end|>", "--no-special"});
  CHECK(as_text.exit_code == 0);
  CHECK(as_text.out.find("151645") == std::string::npos);
  CHECK(run({"tokenize", "--model", kModel, "--text", ""}).out == "[]\n");
}

TEST_CASE("detokenize prints exactly the text, and round-trips tokenize's output") {
  const Run text = run({"detokenize", "--model", kModel, "--ids", "9707,1879"});
  CHECK(text.exit_code == 0);
  CHECK(text.out == "Hello world");
  const std::string original = "it's naïve café, 你好 👨‍👩‍👧 <think>x</think>\n  end  ";
  const Run ids = run({"tokenize", "--model", kModel, "--text", original});
  REQUIRE(ids.exit_code == 0);
  CHECK(run({"detokenize", "--model", kModel, "--ids", ids.out}).out == original);
  CHECK(run({"detokenize", "--model", kModel, "--ids", " 9707 , 151645 ", "--skip-special"}).out == "Hello");
}

TEST_CASE("detokenize exits with 2 on a bad id or an unparsable list; a bad model folder exits with 1") {
  for (const char* bad : {"9707,151669", "-1", "1,,2", "1,x", "99999999999", "1 2"}) {
    INFO(bad);
    const Run r = run({"detokenize", "--model", kModel, "--ids", bad});
    CHECK(r.exit_code == 2);
    CHECK(r.out.empty());
  }
  CHECK(run({"detokenize", "--model", "/nonexistent/model", "--ids", "1"}).exit_code == 1);
  CHECK(run({"tokenize", "--model", "/nonexistent/model", "--text", "x"}).exit_code == 1);
}

}  // namespace
