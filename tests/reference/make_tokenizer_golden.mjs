// Writes tests/engine/data/tokenizer_golden.json: Qwen3 token ids computed by an implementation we did not
// write, @lenml/tokenizers 3.7.2 (a JS port of Hugging Face tokenizers / transformers.js), so the C++
// tokenizer is checked against an independent reading of tokenizer.json.
//
//   npm install --prefix /tmp/lenml @lenml/tokenizers@3.7.2
//   node tests/reference/make_tokenizer_golden.mjs [--lenml /tmp/lenml] [--tokenizer DIR] [--out FILE]
//
// DIR defaults to $AGENTSERVE_TOKENIZER_DIR, else the folder scripts/fetch-tokenizer.sh prints.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const kPackageVersion = "3.7.2";
const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const lenmlPrefix = arg("--lenml", "/tmp/lenml");
const packageDir = join(lenmlPrefix, "node_modules/@lenml/tokenizers");
const packageJson = JSON.parse(readFileSync(join(packageDir, "package.json"), "utf8"));
if (packageJson.version !== kPackageVersion) {
  throw new Error(`need @lenml/tokenizers ${kPackageVersion}, found ${packageJson.version} in ${packageDir}`);
}
const { TokenizerLoader } = await import(pathToFileURL(join(packageDir, "dist/main.mjs")).href);

const tokenizerDir =
  arg("--tokenizer", null) ??
  process.env.AGENTSERVE_TOKENIZER_DIR ??
  execFileSync(join(repo, "scripts/fetch-tokenizer.sh"), { encoding: "utf8" }).trim();
const outPath = arg("--out", join(repo, "tests/engine/data/tokenizer_golden.json"));

const jsonBytes = readFileSync(join(tokenizerDir, "tokenizer.json"));
const tokenizerJSON = JSON.parse(jsonBytes.toString("utf8"));
const tokenizerConfig = JSON.parse(readFileSync(join(tokenizerDir, "tokenizer_config.json"), "utf8"));
const tokenizer = TokenizerLoader.fromPreTrained({ tokenizerJSON, tokenizerConfig });

// Hugging Face's encode_special_tokens=True treats special added tokens as text while added tokens with
// special=false (<think>, <tool_call>, ...) are still matched. transformers.js has no such switch, so the
// same behaviour comes from a second tokenizer whose added_tokens lack the special ones. (For Qwen3 no
// special token overlaps a non-special one, so removing them equals HF's "match, then skip".)
const textOnlyJSON = structuredClone(tokenizerJSON);
textOnlyJSON.added_tokens = textOnlyJSON.added_tokens.filter((t) => !t.special);
const textOnlyTokenizer = TokenizerLoader.fromPreTrained({ tokenizerJSON: textOnlyJSON, tokenizerConfig });

const encode = (tok, text) => Array.from(tok.encode(text, { add_special_tokens: false }));

const code = [
  "def fib(n):",
  "\tif n < 2:",
  "\t\treturn n",
  "    return fib(n - 1) + fib(n - 2)  # two spaces before the comment",
  "",
].join("\n");
const cpp = 'int main() {\n  std::vector<int> v{1, 2, 3};\n  for (auto& x : v) x *= 2;\n  return v[0] == 2 ? 0 : 1;\n}\n';

const cases = [
  ["empty", ""],
  ["plain English", "Hello world"],
  ["punctuation in a sentence", "Hello, world! How are you today?"],
  ["contractions", "I'm sure you're right: they've said we'll see, he'd go, it's John's, don't."],
  ["contractions upper case", "I'M SURE YOU'RE RIGHT, THEY'VE SAID WE'LL GO, HE'D, IT'S, DON'T"],
  ["contractions mixed case", "It'S We'Ll They'Ve I'D"],
  ["apostrophes that are not contractions", "rock'n'roll 'quoted' '' 'x ' s"],
  ["digits", "1234567890"],
  ["numbers in text", "The year 2024 had 366 days; pi is 3.14159265358979 and 1,000,000 people came."],
  ["long number", "98765432109876543210987654321098765432109876543210"],
  ["phone number", "Call +1 (555) 123-4567 ext. 89"],
  ["python with tabs", code],
  ["c++ code", cpp],
  ["json", '{"name": "get_weather", "arguments": {"city": "Paris", "days": 3, "ok": true}}'],
  ["runs of spaces", "a  b   c    d     e"],
  ["trailing spaces", "trailing spaces   "],
  ["leading spaces", "   leading"],
  ["only spaces", "     "],
  ["newlines and crlf", "line1\nline2\n\nline4\r\nline5\r\n\r\n"],
  ["only newlines", "\n\n\n"],
  ["mixed whitespace", "\t\t  \n  \t x \n\n  y"],
  ["spaces before newline", "foo    \n    bar"],
  ["tabs inside text", "a\tb\t\tc\t"],
  ["no-break spaces", "\u00a0nbsp\u00a0\u00a0x \u3000ideographic"],
  ["Cyrillic", "Привет, как дела? Всё хорошо, спасибо."],
  ["Greek", "Καλημέρα κόσμε, τι κάνεις;"],
  ["Arabic", "مرحبا بالعالم، كيف حالك؟"],
  ["Hindi", "नमस्ते दुनिया, आप कैसे हैं?"],
  ["Thai", "สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่างระหว่างคำ"],
  ["Chinese", "你好，世界！今天天气很好。我们去公园散步吧。"],
  ["Japanese", "こんにちは世界、カタカナとひらがなと漢字。"],
  ["Korean", "안녕하세요 세계, 반갑습니다"],
  ["mixed scripts", "English, Русский, 中文, العربية, हिन्दी, ไทย mixed together 123"],
  ["emoji", "I love 🍕 and 🎉! 😀😃😄"],
  ["emoji ZWJ family", "👨‍👩‍👧‍👦 family and 👩‍💻 coder"],
  ["emoji flags", "🇺🇸🇯🇵🇩🇪 flags 🏳️‍🌈"],
  ["emoji skin tones", "👍🏽 👋🏿 ok"],
  ["NFC decomposed e acute", "Cafe\u0301 re\u0301sume\u0301 na\u0131\u0308ve"],
  ["NFC precomposed", "Café résumé naïve"],
  ["NFC Hangul jamo", "\u1100\u1161\u11a8 \u1112\u1161\u11ab"],
  ["NFC singletons", "\u212b \u2126 \u212a"],
  ["NFC combining order", "a\u0323\u0302 o\u0302\u0323"],
  ["punctuation runs", "!!!??? ... ,,, ;;; ::: --- ***"],
  ["typographic punctuation", "«quotes» „German“ ‘single’ — dash – en… ¿¡ §¶†"],
  ["invalid-looking markup", "</ <| |> <|im_start <im_end|> <|im_end| <thinking> </think <tool_call"],
  ["control characters", "a\u0000b\u0001c\u001fd\u007fe"],
  ["unicode numbers", "Ⅻ ½ ² ٣٤٥ ४५ ①②"],
  ["long words", "supercalifragilisticexpialidocious antidisestablishmentarianism"],
  ["url", "https://example.com/path/to/page?query=1&x=y#frag"],
  ["email", "user.name+tag@example.co.uk"],
  ["math", "∑_{i=1}^{n} x_i² ≤ ∞, ∀ε>0 ∃δ"],
  ["markdown", "# Title\n\n- item 1\n- item 2\n\n```bash\nls -la\n```\n"],
  ["repeated characters", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa ==================== ...................."],
  ["chat turn", "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>"],
  ["tool call", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'],
  ["tool response", "<tool_response>\n22 degrees, sunny\n</tool_response>"],
  ["adjacent added tokens", "<|im_end|><|im_end|><|endoftext|><think></think>"],
  ["added tokens glued to text", "abc<|im_end|>def <think>x</think> y"],
];
for (const t of tokenizerJSON.added_tokens) cases.push([`added token ${t.content}`, t.content]);
cases.push(["every added token in a row", tokenizerJSON.added_tokens.map((t) => t.content).join(" ")]);

const golden = cases.map(([name, text]) => {
  const ids = encode(tokenizer, text);
  const entry = { name, text, nfc: text.normalize("NFC"), ids };
  const textOnly = encode(textOnlyTokenizer, text);
  if (JSON.stringify(textOnly) !== JSON.stringify(ids)) entry.ids_special_as_text = textOnly;
  return entry;
});

// Decoding raw byte-level tokens that do not form valid UTF-8: expected text from the package's decoder
// (a TextDecoder that replaces each maximal invalid subpart with U+FFFD, as Rust's from_utf8_lossy does).
const byteToUnicode = (() => {
  const printable = [];
  for (let b = 0x21; b <= 0x7e; ++b) printable.push(b);
  for (let b = 0xa1; b <= 0xac; ++b) printable.push(b);
  for (let b = 0xae; b <= 0xff; ++b) printable.push(b);
  const map = new Map(printable.map((b) => [b, String.fromCodePoint(b)]));
  let n = 0;
  for (let b = 0; b < 256; ++b) if (!map.has(b)) map.set(b, String.fromCodePoint(256 + n++));
  return map;
})();
const byteId = (b) => {
  const id = tokenizerJSON.model.vocab[byteToUnicode.get(b)];
  if (id === undefined) throw new Error(`no byte token for ${b}`);
  return id;
};
const imEnd = tokenizerJSON.added_tokens.find((t) => t.content === "<|im_end|>").id;
const byteCases = [
  ["truncated 3-byte character", [0xe4, 0xbd]],
  ["truncated character then ASCII", [0xe4, 0xbd, 0x61]],
  ["complete 3-byte character from single bytes", [0xe4, 0xbd, 0xa0]],
  ["4-byte emoji from single bytes", [0xf0, 0x9f, 0x8d, 0x95]],
  ["truncated 4-byte character", [0xf0, 0x9f, 0x8d]],
  ["byte 0xff", [0xff]],
  ["overlong NUL", [0xc0, 0x80]],
  ["encoded surrogate", [0xed, 0xa0, 0x80]],
  ["past U+10FFFF", [0xf4, 0x90, 0x80, 0x80]],
  ["lone continuation bytes", [0x80, 0xbf, 0x61]],
  ["two truncated characters", [0x61, 0xe4, 0xbd, 0xe4, 0xbd, 0xa0]],
  ["truncated character before an added token", [0xe4, 0xbd, "im_end"]],
];
const decodeGolden = byteCases.map(([name, bytes]) => {
  const ids = bytes.map((b) => (b === "im_end" ? imEnd : byteId(b)));
  return { name, ids, text: tokenizer.decode(ids, { skip_special_tokens: false }) };
});

const sha256 = createHash("sha256").update(jsonBytes).digest("hex");
const lines = [
  "{",
  `  "generator": ${JSON.stringify(`tests/reference/make_tokenizer_golden.mjs with @lenml/tokenizers ${kPackageVersion}`)},`,
  `  "tokenizer_json_sha256": ${JSON.stringify(sha256)},`,
  '  "encode": [',
  golden.map((g) => "    " + JSON.stringify(g)).join(",\n"),
  "  ],",
  '  "decode": [',
  decodeGolden.map((g) => "    " + JSON.stringify(g)).join(",\n"),
  "  ]",
  "}",
  "",
];
mkdirSync(dirname(outPath), { recursive: true });
writeFileSync(outPath, lines.join("\n"));
console.log(`wrote ${golden.length} encode and ${decodeGolden.length} decode cases to ${outPath}`);
