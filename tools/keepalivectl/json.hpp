// A strict little JSON reader that flattens a document into (path, value)
// rows: {"a":{"b":1},"c":[{"d":"x"}]} -> a.b 1, c[0].d x. Enough for the
// daemon's stats reply; anything malformed is refused (nullopt).
#pragma once

#include <cctype>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace keepalive::ctl::json {

using rows = std::vector<std::pair<std::string, std::string>>;

class flattener {
 public:
  explicit flattener(std::string_view text) : s_{text} {}

  std::optional<rows> run() {
    rows out;
    if (!value("", out)) return std::nullopt;
    skip_ws();
    if (pos_ != s_.size()) return std::nullopt;
    return out;
  }

 private:
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
      if (c == '\\') {
        if (pos_ >= s_.size()) return false;
        const char e = s_[pos_++];
        switch (e) {
          case '"': case '\\': case '/': out += e; break;
          case 'n': out += '\n'; break;
          case 't': out += '\t'; break;
          default: return false;  // \uXXXX etc. never produced by the daemon
        }
      } else if (static_cast<unsigned char>(c) < 0x20) {
        return false;
      } else {
        out += c;
      }
    }
    return false;
  }
  bool value(const std::string& path, rows& out) {
    if (++depth_ > 32) return false;
    skip_ws();
    if (pos_ >= s_.size()) return false;
    bool ok = false;
    const char c = s_[pos_];
    if (c == '{') {
      ++pos_;
      ok = true;
      if (!eat('}')) {
        do {
          std::string key;
          if (!string(key) || !eat(':') || !value(path.empty() ? key : path + "." + key, out)) return false;
        } while (eat(','));
        ok = eat('}');
      }
    } else if (c == '[') {
      ++pos_;
      ok = true;
      if (!eat(']')) {
        std::size_t i = 0;
        do {
          if (!value(path + "[" + std::to_string(i++) + "]", out)) return false;
        } while (eat(','));
        ok = eat(']');
      }
    } else if (c == '"') {
      std::string v;
      ok = string(v);
      if (ok) out.emplace_back(path, v);
    } else {
      const std::size_t start = pos_;
      while (pos_ < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '-' ||
                                  s_[pos_] == '+' || s_[pos_] == '.'))
        ++pos_;
      const std::string_view tok = s_.substr(start, pos_ - start);
      ok = !tok.empty() && (tok == "true" || tok == "false" || tok == "null" || tok.front() == '-' ||
                            std::isdigit(static_cast<unsigned char>(tok.front())));
      for (char d : tok.substr(tok.front() == '-' ? 1 : 0))
        if (ok && tok != "true" && tok != "false" && tok != "null" && !std::isdigit(static_cast<unsigned char>(d)) &&
            d != '.' && d != 'e' && d != 'E' && d != '+' && d != '-')
          ok = false;
      if (ok) out.emplace_back(path, std::string{tok});
    }
    --depth_;
    return ok;
  }

  std::string_view s_;
  std::size_t pos_ = 0;
  int depth_ = 0;
};

[[nodiscard]] inline std::optional<rows> flatten(std::string_view text) { return flattener{text}.run(); }

}  // namespace keepalive::ctl::json
