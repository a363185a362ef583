// Tokenizer encode throughput, single thread, over a ~1 MB corpus of mixed text built here (English prose,
// code, JSON, numbers, Chinese, Russian, Arabic, emoji, chat markup). Prints MB/s and tokens/s for the
// first pass (empty piece cache) and the best warm pass, per kind of text, and the machine it ran on.
//
//   tokenizer_bench [--model DIR] [--mb N] [--write-corpus FILE]
// --write-corpus saves the corpus so another tokenizer (e.g. the JS reference) can be timed on the same text.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "engine/tokenizer.h"

namespace {

using agentserve::engine::Tokenizer;
using Clock = std::chrono::steady_clock;

struct Kind {
  const char* name;
  std::vector<const char*> fragments;
};

const std::vector<Kind>& kinds() {
  static const std::vector<Kind> all = {
      {"english",
       {"The quick brown fox jumps over the lazy dog. ", "It's a truth universally acknowledged that ",
        "we'll need to re-run the experiment, they've said. ",
        "In 1969, 600 million people watched the landing. ",
        "Performance matters: latency, throughput and memory all count. ", "However, ", "Meanwhile the ",
        "government ", "scheduler ", "cache ", "attention ", "transformer ", "tokenization ",
        "implementation "}},
      {"code",
       {"def forward(self, x):\n        return self.proj(x) + x\n", "\tfor (int i = 0; i < n; ++i) {\n",
        "\t\tsum += a[i] * b[i];\n\t}\n", "    if err != nil {\n        return nil, err\n    }\n",
        "const auto it = map.find(key);\n", "#include <vector>\n", "    // TODO: handle the empty case\n"}},
      {"json",
       {R"({"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}})", "\n",
        R"({"id": 12345, "tags": ["a", "b"], "score": 0.9731, "ok": true})", "\n"}},
      {"chinese",
       {"你好，世界！", "今天天气很好，我们去公园散步吧。", "机器学习模型需要大量的数据进行训练。",
        "这个问题的答案并不简单。", "北京是中国的首都。"}},
      {"russian",
       {"Привет, мир! ", "Машинное обучение требует много данных. ", "Это не так просто, как кажется. "}},
      {"arabic", {"مرحبا بالعالم. ", "التعلم الآلي يحتاج إلى الكثير من البيانات. "}},
      {"emoji", {"Great job 👍🏽! ", "🎉🎉 party ", "👨‍👩‍👧‍👦 family ", "🇯🇵 trip ", "😀 "}},
      {"chat",
       {"<|im_start|>user\nWhat is the weather?<|im_end|>\n",
        "<|im_start|>assistant\n<think>\nLet me check.\n</think>\n\n",
        "<tool_call>\n{\"name\": \"get_weather\"}\n</tool_call><|im_end|>\n"}},
  };
  return all;
}

// Fragments in random order with random numbers mixed in, so the text varies like real input does.
std::string make_text(const Kind& kind, std::size_t bytes, std::mt19937& rng) {
  std::string text;
  while (text.size() < bytes) {
    text += kind.fragments[rng() % kind.fragments.size()];
    if (rng() % 8 == 0) text += std::to_string(rng() % 100000) + " ";
  }
  return text;
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown CPU";
}

struct Pass {
  double seconds;
  std::size_t tokens;
};

Pass encode_all(const Tokenizer& tokenizer, const std::vector<std::string>& docs) {
  const auto start = Clock::now();
  std::size_t tokens = 0;
  for (const auto& doc : docs) tokens += tokenizer.encode(doc).size();
  return {seconds_since(start), tokens};
}

}  // namespace

int main(int argc, char** argv) {
  std::string model = AGENTSERVE_TOKENIZER_DIR;
  std::string corpus_path;
  double megabytes = 1.0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--model")) model = argv[i + 1];
    if (!std::strcmp(argv[i], "--mb")) megabytes = std::atof(argv[i + 1]);
    if (!std::strcmp(argv[i], "--write-corpus")) corpus_path = argv[i + 1];
  }
  const auto load_start = Clock::now();
  auto loaded = Tokenizer::load(model);
  if (!loaded.ok()) {
    std::fprintf(stderr, "tokenizer_bench: %s\n", loaded.status().to_string().c_str());
    return 1;
  }
  const double load_seconds = seconds_since(load_start);

  // Documents of ~2 KB, the kinds interleaved: a mixed corpus of `megabytes` MB.
  std::mt19937 rng(42);
  const auto total_bytes = static_cast<std::size_t>(megabytes * 1e6);
  std::vector<std::string> docs;
  std::vector<std::vector<std::string>> docs_by_kind(kinds().size());
  std::size_t bytes = 0;
  for (std::size_t k = 0; bytes < total_bytes; k = (k + 1) % kinds().size()) {
    docs.push_back(make_text(kinds()[k], 2000, rng));
    docs_by_kind[k].push_back(docs.back());
    bytes += docs.back().size();
  }
  if (!corpus_path.empty()) {
    std::ofstream out(corpus_path, std::ios::binary);
    for (const auto& doc : docs) out << doc;
  }

  std::printf("machine: %s, 1 thread\n", cpu_model().c_str());
  std::printf("tokenizer.json load: %.0f ms\n", load_seconds * 1e3);
  std::printf("corpus: %.2f MB in %zu documents\n", bytes / 1e6, docs.size());

  const Tokenizer& tokenizer = loaded.value();
  const Pass cold = encode_all(tokenizer, docs);
  Pass warm{1e30, 0};
  for (int i = 0; i < 5; ++i) {
    const Pass pass = encode_all(tokenizer, docs);
    if (pass.seconds < warm.seconds) warm = pass;
  }
  std::printf("%-10s %9s %12s %8s\n", "text", "MB/s", "tokens/s", "B/token");
  const auto report = [](const char* name, std::size_t n_bytes, Pass pass) {
    std::printf("%-10s %9.2f %12.0f %8.2f\n", name, n_bytes / 1e6 / pass.seconds, pass.tokens / pass.seconds,
                static_cast<double>(n_bytes) / std::max<std::size_t>(pass.tokens, 1));
  };
  report("all, cold", bytes, cold);
  report("all, warm", bytes, warm);
  for (std::size_t k = 0; k < kinds().size(); ++k) {
    std::size_t kind_bytes = 0;
    for (const auto& doc : docs_by_kind[k]) kind_bytes += doc.size();
    Pass best{1e30, 0};
    for (int i = 0; i < 3; ++i) {
      const Pass pass = encode_all(tokenizer, docs_by_kind[k]);
      if (pass.seconds < best.seconds) best = pass;
    }
    report(kinds()[k].name, kind_bytes, best);
  }
  std::printf("warm / cold speed: %.2fx (the piece cache)\n", cold.seconds / warm.seconds);
  return 0;
}
