// The JSON readers and checks behind every config table, with one-line errors naming the field.
#include "config/fields.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace moe {

using nlohmann::json;

namespace {

// The start of v as JSON, for a message. Not v.dump(): that recurses once per nesting level (a
// config of 20000 nested brackets overflowed the stack) and prints all of a huge value.
void show_into(const json& v, std::string& out, int depth) {
  if (out.size() > 40) return;
  if (v.is_array() || v.is_object()) {
    out += v.is_array() ? '[' : '{';
    if (depth >= 8 && !v.empty()) out += "...";
    bool first = true;
    for (auto it = v.begin(); depth < 8 && it != v.end() && out.size() <= 40; ++it) {
      if (!first) out += ',';
      first = false;
      if (v.is_object()) out += json(it.key()).dump(-1, ' ', false, json::error_handler_t::replace) + ':';
      show_into(*it, out, depth + 1);
    }
    out += v.is_array() ? ']' : '}';
  } else if (v.is_string() && v.get_ref<const std::string&>().size() > 40) {
    out += json(v.get_ref<const std::string&>().substr(0, 40)).dump(-1, ' ', false, json::error_handler_t::replace);
  } else {
    out += v.dump(-1, ' ', false, json::error_handler_t::replace);
  }
}

}  // namespace

std::string show(const json& v) {
  std::string s;
  show_into(v, s, 0);
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

int64_t get_int(const json& v, const std::string& where) {
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX))
    fail(where + ": expected an integer, got " + show(v) + " (too large)");
  if (v.is_number_integer() || v.is_number_unsigned()) return v.get<int64_t>();
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15) return int64_t(d);
  }
  fail(where + ": expected an integer, got " + show(v));
}

double get_number(const json& v, const std::string& where) {
  if (v.is_number()) return v.get<double>();
  fail(where + ": expected a number, got " + show(v));
}

bool get_bool(const json& v, const std::string& where) {
  if (v.is_boolean()) return v.get<bool>();
  fail(where + ": expected true or false, got " + show(v));
}

std::string get_string(const json& v, const std::string& where) {
  if (v.is_string()) return v.get<std::string>();
  fail(where + ": expected a string, got " + show(v));
}

void require_object(const json& j, const std::string& where) {
  if (!j.is_object()) fail(where + ": expected a JSON object, got " + show(j));
}

json read_json_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) fail(path + ": is a directory, expected a JSON file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path + ": cannot open file");
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) fail(path + ": cannot read file (is it a directory?)");
  try {
    return json::parse(buffer.str());
  } catch (const json::exception& e) {  // parse_error, and out_of_range for a number like 1e400
    std::string what = e.what();
    const auto colon = what.find("] ");
    fail(path + ": not valid JSON (" + (colon == std::string::npos ? what : what.substr(colon + 2)) + ")");
  }
}

std::string nearest_name(const std::string& word, const std::vector<std::string>& names) {
  std::string best;
  size_t best_distance = SIZE_MAX;
  for (const std::string& c : names) {
    std::vector<size_t> row(c.size() + 1);
    for (size_t j = 0; j <= c.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= word.size(); ++i) {
      size_t diagonal = row[0];
      row[0] = i;
      for (size_t j = 1; j <= c.size(); ++j) {
        const size_t up = row[j];
        row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (word[i - 1] != c[j - 1])});
        diagonal = up;
      }
    }
    if (row[c.size()] < best_distance) best_distance = row[c.size()], best = c;
  }
  return best;
}

std::string whole(double x) {
  char text[32];
  std::snprintf(text, sizeof text, std::fabs(x) < 1e15 ? "%.0f" : "%.2g", x);
  return text;
}

void check_value(int64_t v, Check check, int64_t at_most, const std::string& where) {
  if (at_most > 0 && v > at_most)
    fail(where + ": expected at most " + std::to_string(at_most) + ", got " + std::to_string(v));
  if (check == Check::positive && v <= 0) fail(where + ": expected a positive integer, got " + std::to_string(v));
  if (check == Check::non_negative && v < 0) fail(where + ": expected an integer >= 0, got " + std::to_string(v));
}

void check_value(double v, Check check, const std::string& where) {
  const bool bad = (check == Check::positive_finite && !(std::isfinite(v) && v > 0)) ||
                   (check == Check::non_negative_finite && !(std::isfinite(v) && v >= 0));
  if (!bad) return;
  std::ostringstream s;
  s << where
    << (check == Check::positive_finite ? ": expected a positive finite number, got "
                                        : ": expected a finite number >= 0, got ")
    << v;
  fail(s.str());
}

std::string choice_error(const std::vector<std::string>& names, const std::string& got) {
  std::string expected;
  if (names.size() == 2) {
    expected = "\"" + names[0] + "\" or \"" + names[1] + "\"";
  } else {
    expected = "one of ";
    for (size_t i = 0; i < names.size(); ++i) expected += (i ? ", " : "") + names[i];
  }
  return "expected " + expected + ", got \"" + got + "\"";
}

}  // namespace moe
