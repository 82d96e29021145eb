// `moe inspect PATH...`: model summary, load report of runs (live with --follow), comparison of
// several runs, HTML report, and routing analysis of a checkpoint (--text / --data).
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <memory>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>
#include <omp.h>

#include "commands.hpp"
#include "core/error.hpp"
#include "core/gguf.hpp"
#include "core/safetensors.hpp"
#include "infer/routing.hpp"
#include "model/checkpoint.hpp"
#include "model/summary.hpp"
#include "report/html.hpp"
#include "report/load_console.hpp"
#include "report/metrics.hpp"
#include "train/data.hpp"
#include "train/run_dir.hpp"
#include "train/synth.hpp"
#include "train/train_config.hpp"

namespace moe::app {

namespace {

struct InspectFlags {
  std::vector<std::string> paths;
  std::string html, text, data;
  bool force = false, text_given = false;
  bool json = false, follow = false;
  int64_t layer = -1, window = 0, threads = 0;
  double interval = 1.0;
};

// What a PATH names.
struct Target {
  std::string path, name;
  std::string metrics;      // metrics.jsonl, if any
  bool checkpoint = false;  // config.json + model.safetensors (or its sharded index)
  std::optional<ModelConfig> model;
};

Target classify(const std::string& path) {
  Target t;
  t.path = path;
  std::string trimmed = path;
  while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
  t.name = trimmed.substr(trimmed.find_last_of('/') == std::string::npos ? 0 : trimmed.find_last_of('/') + 1);
  if (is_directory(path)) {
    if (path_exists(path + "/metrics.jsonl")) t.metrics = path + "/metrics.jsonl";
    if (path_exists(path + "/config.json")) t.model = load_checkpoint_config(path);
    t.checkpoint = t.model && holds_checkpoint_tensors(path);
    if (t.metrics.empty() && !t.model)
      fail(path + ": not a run or checkpoint directory (no metrics.jsonl, no config.json)");
    return t;
  }
  if (!path_exists(path)) {
    if (path.find('/') == std::string::npos) {  // a shipped config by name (load_config_file says which exist)
      t.model = load_config_file(path).model;
      return t;
    }
    fail(path + ": no such file or directory");
  }
  if (path.size() > 6 && path.substr(path.size() - 6) == ".jsonl") {
    t.metrics = path;
    return t;
  }
  t.model = load_config_file(path).model;
  return t;
}

RunMetrics filter_layer(RunMetrics run, int64_t layer) {
  if (layer < 0) return run;
  auto keep = [layer](std::vector<LayerLoad>& layers) {
    std::vector<LayerLoad> kept;
    for (auto& l : layers)
      if (l.layer == layer) kept.push_back(std::move(l));
    layers = std::move(kept);
  };
  for (auto& p : run.train) keep(p.layers);
  for (auto& p : run.eval) keep(p.layers);
  return run;
}

// The terminal's size (rows, columns) when stdout is one, else {0, 0}.
std::pair<int, int> terminal_size() {
  winsize ws{};
  if (::isatty(STDOUT_FILENO) && ::ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0)
    return {ws.ws_row, ws.ws_col};
  return {0, 0};
}

bool fits(const std::string& screen, int rows, int cols) {
  int lines = 0;
  size_t start = 0;
  while (start < screen.size()) {
    size_t end = screen.find('\n', start);
    if (end == std::string::npos) end = screen.size();
    std::string line = screen.substr(start, end - start);
    // Escape sequences (colours) take no columns.
    for (size_t esc; (esc = line.find('\033')) != std::string::npos;) line.erase(esc, line.find('m', esc) - esc + 1);
    if (int(line.size()) >= cols) return false;
    ++lines, start = end + 1;
  }
  return lines <= rows;
}

// Redraws the load report of a run as training appends to it, until its end line. On a terminal
// the screen is redrawn in place and fitted to it (the one-line-per-layer summary when the full
// report does not fit); in a pipe the report is printed again only when new steps arrived, with
// no escape codes. A run directory that does not exist yet is waited for.
// --follow's target: a run directory (or metrics.jsonl) that may not exist yet.
Target follow_target(const std::string& path) {
  if (path_exists(path)) {
    Target t = classify(path);
    if (t.metrics.empty() && !is_directory(path)) fail(path + ": --follow needs a run directory or metrics.jsonl");
    return t;
  }
  Target t;
  t.path = path;
  t.name = path.substr(path.find_last_of('/') == std::string::npos ? 0 : path.find_last_of('/') + 1);
  if (path.size() > 6 && path.substr(path.size() - 6) == ".jsonl") t.metrics = path;
  return t;
}

int follow(const InspectFlags& f, const Target& t, bool color) {
  const std::string metrics = t.metrics.empty() ? t.path + "/metrics.jsonl" : t.metrics;
  size_t last_steps = size_t(-1);
  for (;;) {
    const auto [rows, cols] = terminal_size();
    const bool tty = rows > 0;
    std::string screen;
    bool ended = false;
    size_t steps = 0;
    if (!path_exists(metrics)) {
      screen = "waiting for " + metrics + " (the run has not started yet) ...\n";
    } else {
      RunMetrics run = filter_layer(read_metrics(metrics), f.layer);
      run.name = t.name;
      const LoadReport report = build_load_report(run, f.window);
      screen = format_load_report(run, report, color && tty);
      // Room for the footer line below the report.
      if (tty && !fits(screen, rows - 2, cols)) screen = format_load_summary(run, report, color, cols);
      ended = run.ended;
      steps = run.train.size();
    }
    std::string footer = ended ? "" : "(following " + metrics + "; Ctrl-C to stop)\n";
    if (tty) {
      // Long paths are cut at the right edge rather than wrapped.
      for (std::string* text : {&screen, &footer}) {
        std::string fitted;
        std::istringstream lines(*text);
        for (std::string line; std::getline(lines, line);)
          fitted += (fits(line, 1, cols) ? line : line.substr(0, size_t(cols - 1))) + "\n";
        *text = fitted;
      }
      std::printf("\033[H\033[2J%s%s", screen.c_str(), footer.c_str());
    } else if (steps != last_steps || ended) {
      std::printf("%s%s\n", last_steps == size_t(-1) ? "" : "\n", screen.c_str());
    }
    last_steps = steps;
    std::fflush(stdout);
    if (ended) return 0;
    std::this_thread::sleep_for(std::chrono::duration<double>(f.interval));
  }
}

int routing(const InspectFlags& f, const Target& t, bool color) {
  if (!t.checkpoint) fail(t.path + ": --text and --data need a checkpoint directory (config.json + model.safetensors)");
  const auto model = load_checkpoint(t.path);
  const ModelConfig& c = model->config;
  if (c.num_moe_layers() == 0) fail(t.path + ": the model has no MoE layers to analyse");
  const Tokenizer tokenizer = checkpoint_tokenizer(t.path, c);
  ComputeContext ctx;
  // --layer: only that MoE layer of the trace (an index that is no MoE layer is an error).
  auto keep_layer = [&](RoutingTrace& trace) {
    if (f.layer < 0) return;
    const auto it = std::find(trace.layers.begin(), trace.layers.end(), f.layer);
    if (it == trace.layers.end()) {
      std::string layers;
      for (int64_t l : trace.layers) layers += (layers.empty() ? "" : ", ") + std::to_string(l);
      fail("--layer " + std::to_string(f.layer) + ": " + t.path + " has no such MoE layer (its MoE layers: " + layers +
           ")");
    }
    const size_t i = size_t(it - trace.layers.begin());
    trace.layers = {trace.layers[i]};
    trace.experts = {trace.experts[i]};
    trace.weights = {trace.weights[i]};
  };
  if (f.text_given) {
    if (f.text.empty()) fail("--text: expected some text to route, got an empty string");
    // Every character of the text is routed: a trailing newline is the (unscored) last target.
    RoutingTrace trace = trace_routing(ctx, *model, f.text + "\n", c.max_position_embeddings, tokenizer);
    keep_layer(trace);
    if (f.json) {
      std::cout << routing_trace_json(trace, c.num_experts_per_tok)
                       .dump(2, ' ', false, nlohmann::json::error_handler_t::replace)
                << "\n";
    } else {
      std::printf("routing of %zu tokens through %s\n", trace.tokens.size(), t.path.c_str());
      std::fputs(format_routing_text(trace, c.num_experts_per_tok).c_str(), stdout);
    }
    return 0;
  }
  TextData data;
  if (f.data == "@synthetic") {
    data = synthetic_text(kDefaultSynthBytes, kDefaultSynthSeed);
    // The validation part: text the model did not train on.
    data.bytes.erase(data.bytes.begin(), data.bytes.begin() + data.train_end);
    data.domain.erase(data.domain.begin(), data.domain.begin() + data.train_end);
  } else {
    data = load_text_file(f.data);
    load_domains_if_present(data, f.data);
  }
  if (data.size() < 2) fail(f.data + ": needs at least 2 bytes");
  RoutingTrace trace =
      trace_routing(ctx, *model, std::string_view(reinterpret_cast<const char*>(data.bytes.data()), data.bytes.size()),
                    c.max_position_embeddings, tokenizer);
  keep_layer(trace);
  // Each token's domain: the label of its first byte when the text has labels, else its class
  // (letter, digit, punctuation, whitespace, other).
  std::vector<uint8_t> labels;
  std::vector<std::string> names;
  const bool domains = !data.domain.empty();
  if (domains) {
    size_t offset = 0;
    for (const std::string& text : trace.text) {
      labels.push_back(data.domain[std::min(offset, data.domain.size() - 1)]);
      offset += text.size();
    }
    for (int d = 0; d < kNumDomains; ++d) names.push_back(domain_name(d));
  } else {
    labels = token_classes(trace);
    names = token_class_names();
  }
  const auto layers = aggregate_routing(trace, labels, int(names.size()), c.n_routed_experts);
  const auto together = co_activation(trace, c.n_routed_experts);
  if (f.json) {
    std::cout << nlohmann::json{{"data", f.data},
                                {"tokens", trace.tokens.size()},
                                {"domains_known", domains},
                                {"grouped_by", domains ? "domain" : "token class"},
                                {"tokenizer", tokenizer.describe()},
                                {"layers", domain_routing_json(layers, names)},
                                {"co_activation", co_activation_json(together)}}
                     .dump(2, ' ', false, nlohmann::json::error_handler_t::replace)
              << "\n";
    return 0;
  }
  std::printf("routing over %s: %zu tokens%s\n\n", f.data.c_str(), trace.tokens.size(),
              domains ? ", by domain" : ", by token class (no FILE.domains)");
  std::fputs(format_domain_routing(layers, names, color).c_str(), stdout);
  std::fputs(("\n" + format_co_activation(together, color)).c_str(), stdout);
  if (!f.html.empty()) {
    write_file_atomic(f.html, render_co_activation_html(together, t.path, f.data));
    std::fprintf(stderr, "wrote %s\n", f.html.c_str());
  }
  return 0;
}

// A GGUF file (llama.cpp's format): its metadata and tensors, as stored.
int inspect_gguf(const std::string& path, bool json) {
  const GgufFile g = read_gguf(path);
  if (json) {
    nlohmann::json kvs = nlohmann::json::array(), tensors = nlohmann::json::array();
    for (const GgufKv& kv : g.kvs)
      kvs.push_back({{"key", kv.key},
                     {"type", kv.type == GgufType::array ? std::string("array of ") + to_string(kv.element)
                                                         : std::string(to_string(kv.type))},
                     {"count", kv.count},
                     {"value", kv.text}});
    for (const GgufTensorInfo& t : g.tensors)
      tensors.push_back(
          {{"name", t.name}, {"type", ggml_type_name(t.type)}, {"ne", t.ne}, {"offset", t.offset}, {"bytes", t.bytes}});
    std::cout << nlohmann::json{{"path", path},
                                {"version", g.version},
                                {"alignment", g.alignment},
                                {"metadata", kvs},
                                {"tensors", tensors}}
                     .dump(2, ' ', false, nlohmann::json::error_handler_t::replace)
              << "\n";
    return 0;
  }
  std::printf("GGUF v%u %s: %zu metadata keys, %zu tensors (alignment %llu, data from byte %llu)\n", g.version,
              path.c_str(), g.kvs.size(), g.tensors.size(), (unsigned long long)g.alignment,
              (unsigned long long)g.data_start);
  std::printf("\nmetadata\n");
  for (const GgufKv& kv : g.kvs) {
    const std::string type = kv.type == GgufType::array
                                 ? std::string(to_string(kv.element)) + "[" + std::to_string(kv.count) + "]"
                                 : std::string(to_string(kv.type));
    std::printf("  %-44s %-12s %s\n", kv.key.c_str(), type.c_str(), kv.text.c_str());
  }
  std::printf("\ntensors (ne: ggml order, innermost first)\n");
  uint64_t total = 0;
  for (const GgufTensorInfo& t : g.tensors) {
    std::string ne;
    for (uint64_t n : t.ne) ne += (ne.empty() ? "" : " x ") + std::to_string(n);
    std::printf("  %-44s %-5s %-22s %12llu bytes\n", t.name.c_str(), ggml_type_name(t.type).c_str(), ne.c_str(),
                (unsigned long long)t.bytes);
    total += t.bytes;
  }
  std::printf("  %llu bytes of tensor data\n", (unsigned long long)total);
  return 0;
}

}  // namespace

Run add_inspect(CLI::App& app) {
  auto f = std::make_shared<InspectFlags>();
  auto* cmd = app.add_subcommand(
      "inspect", "Model summary, expert-load reports of runs, comparisons, HTML report, routing analysis");
  cmd->add_option("paths", f->paths,
                  "Run directories, checkpoint directories, config files (or shipped config names), metrics.jsonl "
                  "files, or one GGUF file (llama.cpp's format: its metadata and tensors)")
      ->required();
  cmd->add_option("--html", f->html, "Write a self-contained HTML report to FILE");
  cmd->add_flag("--force", f->force, "With --html: replace FILE if it exists");
  cmd->add_flag("--json", f->json, "Print JSON instead of tables");
  cmd->add_option("--layer", f->layer, "Only this MoE layer")->check(NonNegative);
  cmd->add_option("--window", f->window, "Steps in the early and recent windows (default: steps/10, at most 50)")
      ->check(Positive);
  cmd->add_flag("--follow", f->follow, "Redraw the load report as training appends to metrics.jsonl, until it ends");
  cmd->add_option("--interval", f->interval, "Seconds between redraws with --follow")->check(InRange(0.05, 3600.0));
  auto* text = cmd->add_option("--text", f->text, "Show the experts each token of this text goes to");
  auto* data =
      cmd->add_option("--data", f->data,
                      "Aggregate routing over a file (by domain when FILE.domains exists, else by token class; "
                      "@synthetic: the embedded corpus' validation part)");
  text->excludes(data);
  cmd->add_option("-t,--threads", f->threads, "Threads (0: all cores)")->check(ThreadCount());

  return [f, text]() {
    use_threads(f->threads);
    const bool color = ::isatty(STDOUT_FILENO) != 0 && !f->json;
    if (f->paths.size() == 1 && f->paths[0].size() > 5 && f->paths[0].substr(f->paths[0].size() - 5) == ".gguf")
      return inspect_gguf(f->paths[0], f->json);
    const bool replacing = !f->html.empty() && check_output_file(f->html, f->force);
    std::vector<Target> targets;
    if (!f->follow)
      for (const auto& p : f->paths) targets.push_back(classify(p));
    if (f->follow) {
      if (f->paths.size() != 1) fail("--follow takes one run directory");
      return follow(*f, follow_target(f->paths[0]), color);
    }
    f->text_given = text->count() > 0;
    if (f->text_given || !f->data.empty()) {
      if (targets.size() != 1) fail("--text / --data take one checkpoint directory");
      return routing(*f, targets[0], color);
    }

    std::vector<std::unique_ptr<RunMetrics>> runs;
    std::vector<std::unique_ptr<LoadReport>> reports;
    for (const auto& t : targets) {
      if (t.metrics.empty()) {
        runs.emplace_back(), reports.emplace_back();
        continue;
      }
      auto run = std::make_unique<RunMetrics>(filter_layer(read_metrics(t.metrics), f->layer));
      run->name = t.name;
      if (f->window > int64_t(run->train.size()) && !run->train.empty())
        run->notes.push_back("--window " + std::to_string(f->window) + " is more than the " +
                             std::to_string(run->train.size()) + " train steps logged: each window is the whole run");
      if (f->layer >= 0 && !run->train.empty() && run->train.front().layers.empty())
        fail("--layer " + std::to_string(f->layer) + ": " + t.metrics + " has no such MoE layer");
      reports.push_back(std::make_unique<LoadReport>(build_load_report(*run, f->window)));
      add_routing_settling(*run, *reports.back());
      runs.push_back(std::move(run));
    }

    if (!f->html.empty()) {
      std::vector<HtmlRun> html_runs;
      for (size_t i = 0; i < targets.size(); ++i)
        if (runs[i])
          html_runs.push_back(
              {targets[i].name, runs[i].get(), reports[i].get(), targets[i].model ? &*targets[i].model : nullptr});
      if (html_runs.empty()) fail("--html needs at least one run directory (with metrics.jsonl)");
      write_file_atomic(f->html, render_html_report(html_runs, "moe report: " + html_runs[0].label +
                                                                   (html_runs.size() > 1 ? " and others" : "")));
      std::fprintf(stderr, "%s %s\n", replacing ? "replaced" : "wrote", f->html.c_str());
    }

    if (f->json) {
      nlohmann::json out = nlohmann::json::array();
      for (size_t i = 0; i < targets.size(); ++i) {
        nlohmann::json j = {{"path", targets[i].path}};
        if (targets[i].model) j["model"] = summary_json(*targets[i].model);
        if (runs[i]) j["load"] = load_report_json(*runs[i], *reports[i]);
        out.push_back(j);
      }
      std::cout << (out.size() == 1 ? out[0] : out).dump(2, ' ', false, nlohmann::json::error_handler_t::replace)
                << "\n";
      return 0;
    }
    if (!f->html.empty() && !::isatty(STDOUT_FILENO)) return 0;
    std::vector<const RunMetrics*> compared;
    std::vector<const LoadReport*> compared_reports;
    for (size_t i = 0; i < targets.size(); ++i) {
      if (targets[i].model) std::fputs(format_model_summary(*targets[i].model, targets[i].path).c_str(), stdout);
      if (runs[i]) {
        std::fputs("\n", stdout);
        std::fputs(format_load_report(*runs[i], *reports[i], color).c_str(), stdout);
        compared.push_back(runs[i].get()), compared_reports.push_back(reports[i].get());
      }
      if (i + 1 < targets.size()) std::fputs("\n", stdout);
    }
    if (compared.size() > 1) std::fputs(("\n" + format_comparison(compared, compared_reports, color)).c_str(), stdout);
    return 0;
  };
}

}  // namespace moe::app
