// A config struct described as one table of fields: name (the JSON key; Hugging Face's name for
// model fields), type, check, help and command-line flag. Parsing, validation, writing, printing
// and the command-line flags all read the table, so adding a field is adding one row.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.hpp"

namespace moe {

// Readers that insist on the JSON type; `where` ("file: section.field") starts the error message.
int64_t get_int(const nlohmann::json& v, const std::string& where);
double get_number(const nlohmann::json& v, const std::string& where);
bool get_bool(const nlohmann::json& v, const std::string& where);
std::string get_string(const nlohmann::json& v, const std::string& where);
void require_object(const nlohmann::json& j, const std::string& where);
// The start of a JSON value (at most 40 characters), for an error message.
std::string show(const nlohmann::json& v);
// Reads and parses a JSON file; errors name the path.
nlohmann::json read_json_file(const std::string& path);
// Levenshtein-nearest candidate, for "unknown key ... did you mean ...?".
std::string nearest_name(const std::string& word, const std::vector<std::string>& names);
// A size estimate for a message: exact below 1e15, else like 1.6e+23 (never an out-of-range cast).
std::string whole(double x);

// What a field's value must satisfy, checked by validate_fields.
enum class Check { any, positive, non_negative, positive_finite, non_negative_finite };

// An enumeration stored as one of a fixed list of names.
template <class S>
struct Choice {
  std::vector<std::string> names;
  std::function<std::string(const S&)> get;
  std::function<void(S&, const std::string&)> set;  // called with one of `names`
};

// A Hugging Face field whose value changes the math in a way moe does not implement: only `value` is
// accepted (reading a checkpoint written elsewhere refuses any other), and it is written as is.
struct Fixed {
  nlohmann::json value;
};

template <class S>
struct Field {
  const char* name;
  // std::optional<int64_t>: JSON null (or absent) is "not set".
  std::variant<int64_t S::*, double S::*, bool S::*, uint64_t S::*, std::optional<int64_t> S::*, Choice<S>, Fixed>
      member;
  Check check = Check::any;
  int64_t at_most = 0;  // integers: largest accepted value (0: no bound)
  const char* help = "";
  const char* flag = nullptr;  // command-line flag, e.g. "--min-lr"; null: config file only
  // Written only when this holds (fields of one variant of the model); null: always.
  bool (*written)(const S&) = nullptr;
};

void check_value(int64_t v, Check check, int64_t at_most, const std::string& where);
void check_value(double v, Check check, const std::string& where);
std::string choice_error(const std::vector<std::string>& names, const std::string& got);

// Sets the field from a JSON value, checking its type (not its range: see validate_fields).
template <class S>
void read_field(const Field<S>& f, S& s, const nlohmann::json& v, const std::string& where) {
  if (auto p = std::get_if<int64_t S::*>(&f.member))
    s.*(*p) = get_int(v, where);
  else if (auto p = std::get_if<double S::*>(&f.member))
    s.*(*p) = get_number(v, where);
  else if (auto p = std::get_if<bool S::*>(&f.member))
    s.*(*p) = get_bool(v, where);
  else if (auto p = std::get_if<uint64_t S::*>(&f.member)) {
    const int64_t x = get_int(v, where);
    check_value(x, Check::non_negative, 0, where);
    s.*(*p) = uint64_t(x);
  } else if (auto p = std::get_if<std::optional<int64_t> S::*>(&f.member)) {
    if (v.is_null())
      s.*(*p) = std::nullopt;
    else
      s.*(*p) = get_int(v, where);
  } else if (auto p = std::get_if<Fixed>(&f.member)) {
    if (v != p->value)
      fail(where + ": expected " + show(p->value) + " (the only value moe implements), got " + show(v));
  } else {
    const Choice<S>& c = std::get<Choice<S>>(f.member);
    const std::string text = get_string(v, where);
    bool known = false;
    for (const std::string& name : c.names) known = known || name == text;
    if (!known) fail(where + ": " + choice_error(c.names, text));
    c.set(s, text);
  }
}

template <class S>
nlohmann::json write_field(const Field<S>& f, const S& s) {
  if (auto p = std::get_if<int64_t S::*>(&f.member)) return s.*(*p);
  if (auto p = std::get_if<double S::*>(&f.member)) return s.*(*p);
  if (auto p = std::get_if<bool S::*>(&f.member)) return s.*(*p);
  if (auto p = std::get_if<uint64_t S::*>(&f.member)) return s.*(*p);
  if (auto p = std::get_if<std::optional<int64_t> S::*>(&f.member)) {
    const std::optional<int64_t>& v = s.*(*p);
    return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
  }
  if (auto p = std::get_if<Fixed>(&f.member)) return p->value;
  return std::get<Choice<S>>(f.member).get(s);
}

// Checks every field's Check and bound, in table order; `prefix` starts each field's name.
template <class S>
void validate_fields(const std::vector<Field<S>>& fields, const S& s, const std::string& prefix) {
  for (const Field<S>& f : fields) {
    const std::string at = prefix + f.name;
    if (auto p = std::get_if<int64_t S::*>(&f.member))
      check_value(s.*(*p), f.check, f.at_most, at);
    else if (auto p = std::get_if<double S::*>(&f.member))
      check_value(s.*(*p), f.check, at);
    else if (auto p = std::get_if<std::optional<int64_t> S::*>(&f.member)) {
      if (s.*(*p)) check_value(*(s.*(*p)), f.check, f.at_most, at);
    }
  }
}

template <class S>
const Field<S>* find_field(const std::vector<Field<S>>& fields, const std::string& name) {
  for (const Field<S>& f : fields)
    if (name == f.name) return &f;
  return nullptr;
}

template <class S>
std::vector<std::string> field_names(const std::vector<Field<S>>& fields) {
  std::vector<std::string> names;
  for (const Field<S>& f : fields) names.push_back(f.name);
  return names;
}

// Every field as a JSON object (its keys sorted, as nlohmann::json keeps them).
template <class S>
nlohmann::json fields_json(const std::vector<Field<S>>& fields, const S& s) {
  nlohmann::json j = nlohmann::json::object();
  for (const Field<S>& f : fields)
    if (!f.written || f.written(s)) j[f.name] = write_field(f, s);
  return j;
}

}  // namespace moe
