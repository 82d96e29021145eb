// `moe sweep`: several training runs that differ in named settings, one after the other or --jobs
// at once, each a `moe train` child process in its own directory under --out (a crash or a kill of
// one run cannot take the others down, and each is an ordinary run directory for inspect/infer).
// Resumable: a finished run is skipped, an interrupted one continued with --resume. Ends with the
// comparison report (terminal table, --html).
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <thread>

#include "commands.hpp"
#include "core/error.hpp"
#include "core/safetensors.hpp"
#include "report/html.hpp"
#include "report/load_console.hpp"
#include "report/metrics.hpp"
#include "train/signals.hpp"
#include "train/sweep.hpp"

extern char** environ;

namespace moe::app {

namespace {

struct SweepFlags {
  std::string config = "small", data, out, html, preset;
  std::vector<std::string> set, runs, grid;
  int64_t jobs = 1, threads = 0;
  bool force_html = false, dry_run = false;
};

enum class RunState { fresh, restart, resume, finished };

// Where a run's directory stands. A run that ended on its own (all steps, or stopped by non-finite
// steps) is finished; one with a checkpoint is continued; a directory without a checkpoint (killed
// before the first save) starts over.
RunState run_state(const std::string& dir, std::string& detail) {
  if (!path_exists(dir)) return RunState::fresh;
  const std::string metrics = dir + "/metrics.jsonl";
  if (path_exists(metrics)) {
    const RunMetrics m = read_metrics(metrics);
    if (m.ended && (m.end_reason == "completed" || m.end_reason == "non-finite")) {
      detail = m.end_reason == "completed" ? "finished" : "stopped by non-finite steps";
      return RunState::finished;
    }
  }
  if (path_exists(dir + "/trainer_state.json")) return RunState::resume;
  return RunState::restart;
}

struct Child {
  pid_t pid = -1;
  size_t run = 0;
  std::chrono::steady_clock::time_point start;
};

// Starts `moe train ...` (this binary) with stdout and stderr appended to `log`, in its own process
// group so that a Ctrl-C reaches it once, forwarded by the sweep.
pid_t spawn_train(const std::vector<std::string>& args, const std::string& log) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGINT), sigaddset(&defaults, SIGTERM), sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, "/proc/self/exe", &actions, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) fail("could not start moe train for " + log + ": " + std::strerror(rc));
  return pid;
}

// "step 400/1000, loss 1.623, MaxVio 0.12" from a run's last train line, or "starting".
std::string progress(const std::string& dir) {
  const std::string path = dir + "/metrics.jsonl";
  if (!path_exists(path)) return "starting";
  try {
    const RunMetrics m = read_metrics(path);
    if (m.train.empty()) return "starting";
    const StepRecord& r = m.train.back();
    double v = 0;
    for (const auto& l : r.layers) v += l.maxvio;
    char buf[160];
    std::snprintf(buf, sizeof buf, "step %lld/%lld, loss %.3f, MaxVio_batch %.2f", (long long)r.step,
                  (long long)(m.settings ? m.settings->steps : 0), r.loss,
                  r.layers.empty() ? 0.0 : v / double(r.layers.size()));
    return buf;
  } catch (const Error&) {
    return "running";
  }
}

}  // namespace

Run add_sweep(CLI::App& app) {
  auto f = std::make_shared<SweepFlags>();
  auto* cmd = app.add_subcommand(
      "sweep", "Train several runs that differ in named settings (e.g. the balancing method) and compare them");
  cmd->add_option("--out", f->out, "Sweep directory: one run directory per run, configs/, logs")->required();
  cmd->add_option("--config", f->config, "Base config file or shipped config name")->capture_default_str();
  cmd->add_option("--data", f->data, "Text file every run trains on (default: the embedded synthetic corpus)");
  cmd->add_option("--set", f->set, "KEY=VALUE for every run (a train field such as steps=600, or model.FIELD)");
  cmd->add_option("--run", f->runs,
                  "A named run: NAME:KEY=VALUE[,KEY=VALUE...], e.g. \"u=1e-3:balance=loss-free,bias_rate=1e-3\" "
                  "(repeatable)");
  cmd->add_option("--grid", f->grid,
                  "KEY=V1,V2,...: one run per value, every combination of several --grid, crossed with the --run "
                  "entries (repeatable)");
  cmd->add_option("--preset", f->preset,
                  "paper: the sweep of Wang et al. 2024 (balance none, aux, and loss-free with u = 1e-4, 1e-3, "
                  "1e-2)")
      ->check(CLI::IsMember(sweep_presets()));
  cmd->add_option("--jobs", f->jobs, "Runs trained at once; the threads are divided between them")
      ->check(InRange(1, 64))
      ->capture_default_str();
  cmd->add_option("-t,--threads", f->threads, "Threads for the whole sweep (0: all cores)")->check(ThreadCount());
  cmd->add_option("--html", f->html, "Also write the comparison as a self-contained HTML report to FILE");
  cmd->add_flag("--force", f->force_html, "With --html: replace FILE if it exists");
  cmd->add_flag("--dry-run", f->dry_run, "Print the runs and their state, train nothing");

  return [f]() {
    block_stop_signals();  // before any thread: the StopSignals below receives SIGINT/SIGTERM
    const Config base = load_config_file(f->config);
    const std::vector<SweepRun> runs = plan_sweep(base, {f->set, f->runs, f->grid, f->preset});
    if (runs.size() < 2 && f->runs.empty() && f->grid.empty() && f->preset.empty())
      fail("nothing to sweep: give --run, --grid or --preset");
    const bool replacing_html = !f->html.empty() && check_output_file(f->html, f->force_html);
    const std::string data = f->data.empty() ? "" : std::filesystem::absolute(f->data).lexically_normal().string();
    if (!data.empty() && !path_exists(data)) fail(f->data + ": no such file (--data)");
    const int64_t total_threads = f->threads > 0 ? f->threads : hardware_threads();
    const int64_t jobs = std::min<int64_t>(f->jobs, int64_t(runs.size()));
    const int64_t per_run = std::max<int64_t>(1, total_threads / jobs);

    // The sweep's record of each run's settings: a second invocation with other settings for an
    // existing run would otherwise skip or resume it silently under the wrong name.
    make_directories(f->out + "/configs");
    std::vector<RunState> states;
    std::vector<std::string> details(runs.size());
    for (size_t i = 0; i < runs.size(); ++i) {
      const SweepRun& r = runs[i];
      const std::string dir = f->out + "/" + r.name, cfg = f->out + "/configs/" + r.name + ".json";
      Config stored_form = r.config;
      stored_form.train.threads = per_run;
      nlohmann::json wanted = config_file_json(stored_form);
      wanted["train"].erase("threads");  // may change between invocations (--jobs, -t)
      RunState s = run_state(dir, details[i]);
      if (path_exists(cfg) && s != RunState::fresh) {
        // Read back through this moe's parser: a field added since (with its default) is no change.
        nlohmann::json had = config_file_json(config_from_json(read_json_file(cfg), cfg));
        had["train"].erase("threads");
        if (had != wanted)
          fail(dir + ": this run was trained with other settings (" + cfg +
               "); use another --out, or remove the run directory to train it again");
      }
      if (!f->dry_run) write_file_atomic(cfg, config_file_json(stored_form).dump(2) + "\n");
      states.push_back(s);
    }
    std::printf("sweep %s: %zu runs, %lld at once, %lld threads each\n", f->out.c_str(), runs.size(), (long long)jobs,
                (long long)per_run);
    for (size_t i = 0; i < runs.size(); ++i) {
      std::string settings;
      for (const SweepSetting& s : runs[i].settings) settings += (settings.empty() ? "" : ", ") + s.key + "=" + s.value;
      const char* state = states[i] == RunState::finished  ? details[i].c_str()
                          : states[i] == RunState::resume  ? "interrupted: will resume"
                          : states[i] == RunState::restart ? "no checkpoint yet: will start over"
                                                           : "to train";
      std::printf("  %-20s %-36s %s\n", runs[i].name.c_str(), settings.empty() ? "(base)" : settings.c_str(), state);
    }
    std::fflush(stdout);
    if (f->dry_run) return 0;

    StopSignals stop;
    std::vector<size_t> queue;
    for (size_t i = 0; i < runs.size(); ++i)
      if (states[i] != RunState::finished) queue.push_back(i);
    std::vector<Child> running;
    std::vector<std::string> failed;
    int stop_signal = 0;
    size_t next = 0;
    auto last_progress = std::chrono::steady_clock::now();
    while (next < queue.size() || !running.empty()) {
      if (!stop_signal && (stop_signal = stop.received()) != 0) {
        std::printf("sweep: %s received; stopping the running runs (each saves a checkpoint)\n",
                    stop_signal == SIGINT ? "SIGINT" : "SIGTERM");
        std::fflush(stdout);
        for (const Child& c : running) kill(c.pid, stop_signal);
      }
      while (!stop_signal && next < queue.size() && int64_t(running.size()) < jobs) {
        const size_t i = queue[next++];
        const SweepRun& r = runs[i];
        const std::string dir = f->out + "/" + r.name;
        std::vector<std::string> args = {"moe", "train", "--out", dir, "-t", std::to_string(per_run)};
        if (states[i] == RunState::resume) {
          args.push_back("--resume");
        } else {
          args.insert(args.end(), {"--config", f->out + "/configs/" + r.name + ".json"});
          if (!data.empty()) args.insert(args.end(), {"--data", data});
          if (states[i] == RunState::restart) args.push_back("--force");
        }
        const std::string log = f->out + "/" + r.name + ".log";
        running.push_back({spawn_train(args, log), i, std::chrono::steady_clock::now()});
        std::printf("[%zu/%zu] %s: %s (log %s)\n", next, queue.size(), r.name.c_str(),
                    states[i] == RunState::resume ? "resuming" : "training", log.c_str());
        std::fflush(stdout);
      }
      int status = 0;
      const pid_t done = waitpid(-1, &status, WNOHANG);
      if (done <= 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        if (std::chrono::steady_clock::now() - last_progress > std::chrono::seconds(30)) {
          last_progress = std::chrono::steady_clock::now();
          for (const Child& c : running)
            std::printf("  %s: %s\n", runs[c.run].name.c_str(), progress(f->out + "/" + runs[c.run].name).c_str());
          std::fflush(stdout);
        }
        continue;
      }
      auto it = std::find_if(running.begin(), running.end(), [done](const Child& c) { return c.pid == done; });
      if (it == running.end()) continue;
      const SweepRun& r = runs[it->run];
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - it->start).count();
      const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      if (code == 0) {
        std::printf("  %s: done in %.0f s\n", r.name.c_str(), seconds);
      } else if (stop_signal && (code == 130 || code == 143)) {
        std::printf("  %s: stopped with a checkpoint after %.0f s\n", r.name.c_str(), seconds);
      } else {
        std::printf("  %s: failed (exit %d); see %s/%s.log\n", r.name.c_str(), code, f->out.c_str(), r.name.c_str());
        failed.push_back(r.name);
      }
      std::fflush(stdout);
      running.erase(it);
    }
    if (stop_signal) {
      std::printf("sweep stopped; the same command continues it\n");
      return 128 + stop_signal;
    }

    // The comparison of every run that has metrics.
    std::vector<std::unique_ptr<RunMetrics>> metrics;
    std::vector<std::unique_ptr<LoadReport>> reports;
    for (const SweepRun& r : runs) {
      const std::string path = f->out + "/" + r.name + "/metrics.jsonl";
      if (!path_exists(path)) continue;
      metrics.push_back(std::make_unique<RunMetrics>(read_metrics(path)));
      metrics.back()->name = r.name;
      reports.push_back(std::make_unique<LoadReport>(build_load_report(*metrics.back(), 0)));
      add_routing_settling(*metrics.back(), *reports.back());
    }
    std::vector<const RunMetrics*> compared;
    std::vector<const LoadReport*> compared_reports;
    std::vector<HtmlRun> html_runs;
    for (size_t i = 0; i < metrics.size(); ++i) {
      compared.push_back(metrics[i].get()), compared_reports.push_back(reports[i].get());
      html_runs.push_back({metrics[i]->name, metrics[i].get(), reports[i].get(), nullptr});
    }
    if (!compared.empty()) std::fputs(("\n" + format_comparison(compared, compared_reports, false)).c_str(), stdout);
    if (!f->html.empty() && !html_runs.empty()) {
      write_file_atomic(f->html, render_html_report(html_runs, "moe sweep: " + f->out));
      std::printf("%s %s\n", replacing_html ? "replaced" : "wrote", f->html.c_str());
    }
    if (!failed.empty()) {
      std::string names;
      for (const auto& n : failed) names += (names.empty() ? "" : ", ") + n;
      fail("sweep: " + std::to_string(failed.size()) + " run(s) failed: " + names + " (their logs say why)");
    }
    return 0;
  };
}

}  // namespace moe::app
