#include "report/train_console.hpp"

#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/summary.hpp"

namespace moe {

namespace {

double mean_maxvio(const std::vector<LayerLoad>& layers) {
  double sum = 0.0;
  for (const auto& l : layers) sum += l.maxvio;
  return layers.empty() ? 0.0 : sum / double(layers.size());
}

std::string duration(double seconds) {
  char buf[32];
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const long s = long(seconds + 0.5);
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, (s / 60) % 60);
  else if (s >= 60)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%lds", s);
  return buf;
}

}  // namespace

std::string status_line(const StepRecord& r, double last_val_loss, double eta_seconds, int width) {
  char buf[64];
  struct Part {
    std::string text;
    int drop_rank;  // dropped first: the highest rank
  };
  std::vector<Part> parts;
  std::snprintf(buf, sizeof buf, "step %lld/%lld", (long long)r.step, (long long)r.steps);
  parts.push_back({buf, 0});
  std::snprintf(buf, sizeof buf, "loss %.4f", r.loss);
  parts.push_back({buf, 0});
  // Named as in metrics.jsonl, unlike the compact labels around it.
  if (r.mtp_loss) std::snprintf(buf, sizeof buf, "mtp_loss %.4f", *r.mtp_loss), parts.push_back({buf, 5});
  if (std::isfinite(last_val_loss))
    std::snprintf(buf, sizeof buf, "val %.4f", last_val_loss);
  else
    std::snprintf(buf, sizeof buf, "val -");
  parts.push_back({buf, 2});
  std::snprintf(buf, sizeof buf, "lr %.2e", r.lr);
  parts.push_back({buf, 6});
  std::snprintf(buf, sizeof buf, "%.0f tok/s", r.tokens_per_s);
  parts.push_back({buf, 4});
  if (!r.layers.empty()) {  // no MoE layer, no load to report
    std::snprintf(buf, sizeof buf, "maxvio %.3f", mean_maxvio(r.layers));
    parts.push_back({buf, 3});
  }
  parts.push_back({"eta " + duration(eta_seconds), 1});
  auto joined = [&](int max_rank) {
    std::string line;
    for (const Part& p : parts)
      if (p.drop_rank <= max_rank) line += (line.empty() ? "" : "  ") + p.text;
    return line;
  };
  for (int max_rank = 6; max_rank > 0; --max_rank) {
    const std::string line = joined(max_rank);
    if (width <= 0 || int(line.size()) < width) return line;
  }
  std::string line = joined(0);
  if (width > 1 && int(line.size()) >= width) line.resize(size_t(width - 1));
  return line;
}

ConsoleTrainObserver::ConsoleTrainObserver(FILE* out, bool tty, int64_t log_every, int width)
    : out_(out), tty_(tty), log_every_(log_every), width_(width) {}

int ConsoleTrainObserver::columns() const {
  if (width_ > 0) return width_;
  winsize ws{};
  if (::ioctl(::fileno(out_), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

void ConsoleTrainObserver::flush() {
  errno = 0;
  if (std::fflush(out_) != 0 || std::ferror(out_)) {
    if (errno == EPIPE) closed_ = true;  // `| head` has gone: stop writing, let the run stop
    std::clearerr(out_);
  }
}

void ConsoleTrainObserver::clear_status() {
  if (status_shown_ && !closed_) std::fputs("\r\033[2K", out_), status_shown_ = false;
}

void ConsoleTrainObserver::on_start(const RunStart& start) {
  if (closed_) return;
  const Config& c = *start.config;
  const ModelConfig& m = c.model;
  const TrainConfig& t = c.train;
  const ParamSummary params = summarize_params(m);
  // Lines that fit 80 columns for the shipped configs; the full config is in the run directory.
  std::fprintf(out_, "model    %lld layers (%lld MoE), hidden %lld, %s, %lld experts top-%lld + %lld shared%s\n",
               (long long)m.num_hidden_layers, (long long)m.num_moe_layers(), (long long)m.hidden_size,
               m.mla() ? "MLA" : "GQA", (long long)m.n_routed_experts, (long long)m.num_experts_per_tok,
               (long long)m.n_shared_experts, m.mtp() ? ", MTP" : "");
  std::fprintf(out_, "params   %.3gM, %.3gM active per token\n", double(params.total) / 1e6,
               double(params.activated) / 1e6);
  std::fprintf(out_, "train    %lld steps of %lld x %lld x %lld, lr %.3g -> %.3g, %s", (long long)t.steps,
               (long long)t.batch, (long long)t.seq, (long long)t.accum, t.lr, t.min_lr,
               to_json(t).at("balance").get<std::string>().c_str());
  if (uses_bias(t.balance)) {
    std::fprintf(out_, " (%su %.3g%s", t.bias_update == BiasUpdate::proportional ? "proportional " : "", t.bias_rate,
                 t.bias_center ? ", centred" : "");
    if (t.bias_freeze_at < 1.0)
      std::fprintf(out_, ", frozen after step %.0f", std::ceil(t.bias_freeze_at * double(t.steps)));
    std::fprintf(out_, ")");
  }
  if (t.balance == Balance::aux || t.balance == Balance::global_aux) std::fprintf(out_, " (alpha %.3g)", t.aux_alpha);
  if (t.z_loss > 0) std::fprintf(out_, ", z-loss %.3g", t.z_loss);
  std::fprintf(out_, ", seed %llu\n", (unsigned long long)t.seed);
  std::fprintf(out_, "data     %s: %lld train + %lld validation bytes\n", start.data_source.c_str(),
               (long long)start.train_bytes, (long long)start.val_bytes);
  std::fprintf(out_, "run      %s, %d thread%s%s (full config: train_config.json)\n", start.out_dir.c_str(),
               start.threads, start.threads == 1 ? "" : "s",
               start.ranks > 1 ? (" x " + std::to_string(start.ranks) + " ranks").c_str() : "");
  if (start.start_step > 0) std::fprintf(out_, "resuming after step %lld\n", (long long)start.start_step);
  if (m.mtp() && t.mtp_weight == 0.0)
    std::fprintf(out_,
                 "note: mtp_weight is 0: the multi-token-prediction module is not trained (it keeps its initial "
                 "or loaded weights); evaluations still run it (mtp_val_loss)\n");
  flush();
}

void ConsoleTrainObserver::on_step(const StepRecord& r, double last_val_loss) {
  elapsed_ += r.seconds;
  ++steps_done_;
  if (closed_) return;
  const double eta = elapsed_ / double(steps_done_) * double(r.steps - r.step);
  if (tty_) {
    std::fprintf(out_, "\r\033[2K%s", status_line(r, last_val_loss, eta, columns()).c_str());
    status_shown_ = true;
  } else if (r.step % log_every_ == 0 || r.step == r.steps) {
    std::fprintf(out_, "%s\n", status_line(r, last_val_loss, eta, 0).c_str());
  }
  flush();
}

void ConsoleTrainObserver::on_eval(const EvalRecord& r) {
  if (closed_) return;
  clear_status();
  char buf[96];
  std::vector<std::string> words;
  std::snprintf(buf, sizeof buf, "eval step %lld: val_loss %.4f over %lld tokens", (long long)r.step, r.val_loss,
                (long long)r.tokens);
  words.push_back(buf);
  std::snprintf(buf, sizeof buf, "(%.4f bits/byte)", r.val_bpb), words.push_back(buf);
  if (r.mtp_val_loss) std::snprintf(buf, sizeof buf, "mtp_val_loss %.4f", *r.mtp_val_loss), words.push_back(buf);
  if (!r.layers.empty()) words.push_back("maxvio_global");  // none in a model without MoE layers
  for (const auto& l : r.layers)
    std::snprintf(buf, sizeof buf, "L%lld=%.3f", (long long)l.layer, l.maxvio), words.push_back(buf);
  // On a terminal the words wrap at its width (continuation lines indented), so no line wraps by itself.
  const int width = tty_ ? columns() : 0;
  std::string line;
  for (const std::string& w : words) {
    if (!line.empty() && width > 0 && int(line.size() + 1 + w.size()) >= width) {
      std::fprintf(out_, "%s\n", line.c_str());
      line = "  ";
    }
    line += (line.empty() || line == "  " ? "" : " ") + w;
  }
  std::fprintf(out_, "%s\n", line.c_str());
  flush();
}

void ConsoleTrainObserver::on_save(const std::string& dir, int64_t step) {
  if (closed_) return;
  clear_status();  // on a terminal too: the next step redraws the status line below it
  std::fprintf(out_, "saved checkpoint at step %lld in %s\n", (long long)step, dir.c_str());
  flush();
}

void ConsoleTrainObserver::on_end(const RunEnd& e) {
  if (closed_) return;
  clear_status();
  if (e.reason == "completed")
    std::fprintf(out_, "\nfinished all %lld steps in %s\n", (long long)e.planned_steps, duration(e.seconds).c_str());
  else if (e.reason == "stop-at")
    std::fprintf(out_, "\nstopped at step %lld of %lld (--stop-at) after %s\n", (long long)e.step,
                 (long long)e.planned_steps, duration(e.seconds).c_str());
  else
    std::fprintf(out_, "\nstopped at step %lld of %lld (%s) after %s\n", (long long)e.step, (long long)e.planned_steps,
                 e.reason.c_str(), duration(e.seconds).c_str());
  const EvalRecord *first = e.first_eval, *last = e.last_eval;
  if (first && last) {
    std::fprintf(out_, "  %-8s %18s %18s\n", "layer", "MaxVio first eval", "MaxVio last eval");
    for (size_t i = 0; i < last->layers.size() && i < first->layers.size(); ++i)
      std::fprintf(out_, "  %-8lld %12.3f @%-5lld %12.3f @%-5lld\n", (long long)last->layers[i].layer,
                   first->layers[i].maxvio, (long long)first->step, last->layers[i].maxvio, (long long)last->step);
    if (first == last || first->step == last->step)
      std::fprintf(out_, "  val loss   %.4f (step %lld; the only evaluation)\n", last->val_loss, (long long)last->step);
    else
      std::fprintf(out_, "  val loss   %.4f (step %lld) -> %.4f (step %lld)\n", first->val_loss, (long long)first->step,
                   last->val_loss, (long long)last->step);
  }
  if (e.last_step)
    std::fprintf(out_, "  train loss %.4f at step %lld\n", e.last_step->loss, (long long)e.last_step->step);
  std::fprintf(out_, "  throughput %.0f tokens/s (mean over this run's steps)\n", e.mean_tokens_per_s);
  if (e.saved_step >= 0)
    std::fprintf(out_, "  checkpoint %s (step %lld)\n", e.out_dir.c_str(), (long long)e.saved_step);
  if (e.step < e.planned_steps) std::fprintf(out_, "  continue with: moe train --out %s --resume\n", e.out_dir.c_str());
  flush();
}

}  // namespace moe
