// A strict, small JSON reader for the tools (keepalivectl, the mini-VMM's
// QMP-like socket): a document is flattened into (path, value) rows,
// {"a":{"b":1},"c":[{"d":"x"}]} -> a.b 1, c[0].d x. Malformed input: nullopt.
#pragma once

#include <cctype>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace keepalive::detail::json {

using rows = std::vector<std::pair<std::string, std::string>>;

class reader {
 public:
  explicit reader(std::string_view text) : s_{text} {}

  std::optional<rows> run() {
    rows out;
    if (!value("", out, 0)) return std::nullopt;
    skip_ws();
    if (pos_ != s_.size()) return std::nullopt;
    return out;
  }

 private:
  static constexpr int max_depth = 16;

  void skip_ws() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  bool eat(char c) {
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool string(std::string& out) {
    if (!eat('"')) return false;
    out.clear();
    while (pos_ < s_.size()) {
      const char c = s_[pos_++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return false;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= s_.size()) return false;
      switch (const char e = s_[pos_++]) {
        case '"': case '\\': case '/': out += e; break;
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        default: return false;  // \uXXXX: never needed by this protocol
      }
    }
    return false;
  }
  bool literal(std::string& out) {
    skip_ws();
    const std::size_t start = pos_;
    while (pos_ < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '-' ||
                                s_[pos_] == '+' || s_[pos_] == '.'))
      ++pos_;
    out = std::string{s_.substr(start, pos_ - start)};
    if (out == "true" || out == "false" || out == "null") return true;
    if (out.empty()) return false;
    double d = 0;
    int used = 0;
    return std::sscanf(out.c_str(), "%lf%n", &d, &used) == 1 && static_cast<std::size_t>(used) == out.size();
  }
  bool value(const std::string& path, rows& out, int depth) {
    if (depth > max_depth) return false;
    skip_ws();
    if (pos_ >= s_.size()) return false;
    if (s_[pos_] == '{') {
      ++pos_;
      if (eat('}')) return true;
      do {
        std::string key;
        if (!string(key) || !eat(':')) return false;
        if (!value(path.empty() ? key : path + "." + key, out, depth + 1)) return false;
      } while (eat(','));
      return eat('}');
    }
    if (s_[pos_] == '[') {
      ++pos_;
      if (eat(']')) return true;
      std::size_t i = 0;
      do {
        if (!value(path + "[" + std::to_string(i++) + "]", out, depth + 1)) return false;
      } while (eat(','));
      return eat(']');
    }
    std::string v;
    if (s_[pos_] == '"' ? !string(v) : !literal(v)) return false;
    out.emplace_back(path, std::move(v));
    return true;
  }

  std::string_view s_;
  std::size_t pos_ = 0;
};

[[nodiscard]] inline std::optional<rows> parse(std::string_view text) { return reader{text}.run(); }

[[nodiscard]] inline const std::string* find(const rows& r, std::string_view path) {
  for (const auto& [k, v] : r)
    if (k == path) return &v;
  return nullptr;
}

// A JSON string literal for `s` (quotes included).
[[nodiscard]] inline std::string quote(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out + "\"";
}

}  // namespace keepalive::detail::json
