#include "report/train_console.hpp"

#include <cmath>

#include <nlohmann/json.hpp>

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

ConsoleTrainObserver::ConsoleTrainObserver(FILE* out, bool tty, int64_t log_every)
    : out_(out), tty_(tty), log_every_(log_every) {}

void ConsoleTrainObserver::clear_status() {
  if (status_shown_) std::fputs("\r\033[2K", out_), status_shown_ = false;
}

void ConsoleTrainObserver::on_start(const Config& effective, const std::string& out_dir, const std::string& data_source,
                                    int64_t start_step) {
  const nlohmann::json j = config_file_json(effective);
  std::fprintf(out_, "effective config:\n%s\n", j.dump(2).c_str());
  std::fprintf(out_, "data: %s\nrun directory: %s (metrics.jsonl, checkpoint)\n", data_source.c_str(), out_dir.c_str());
  if (start_step > 0) std::fprintf(out_, "resuming after step %lld\n", (long long)start_step);
  if (effective.model.mtp() && effective.train.mtp_weight == 0.0)
    std::fprintf(out_,
                 "note: mtp_weight is 0: the multi-token-prediction module is not run and not trained (it keeps "
                 "its initial or loaded weights)\n");
  std::fflush(out_);
}

void ConsoleTrainObserver::on_step(const StepRecord& r, double last_val_loss) {
  elapsed_ += r.seconds;
  ++steps_done_;
  const double eta = elapsed_ / double(steps_done_) * double(r.steps - r.step);
  char val[32] = "-";
  if (std::isfinite(last_val_loss)) std::snprintf(val, sizeof val, "%.4f", last_val_loss);
  char mtp[32] = "";
  if (r.mtp_loss) std::snprintf(mtp, sizeof mtp, "  mtp %.4f", *r.mtp_loss);
  char line[256];
  std::snprintf(line, sizeof line, "step %lld/%lld  loss %.4f%s  val %s  lr %.2e  %.0f tok/s  maxvio %.3f  eta %s",
                (long long)r.step, (long long)r.steps, r.loss, mtp, val, r.lr, r.tokens_per_s, mean_maxvio(r.layers),
                duration(eta).c_str());
  if (tty_) {
    std::fprintf(out_, "\r\033[2K%s", line);
    status_shown_ = true;
  } else if (r.step % log_every_ == 0 || r.step == r.steps) {
    std::fprintf(out_, "%s\n", line);
  }
  std::fflush(out_);
}

void ConsoleTrainObserver::on_eval(const EvalRecord& r) {
  clear_status();
  std::fprintf(out_, "eval step %lld: val_loss %.4f over %lld tokens, ", (long long)r.step, r.val_loss,
               (long long)r.tokens);
  if (r.mtp_val_loss) std::fprintf(out_, "mtp_val_loss %.4f, ", *r.mtp_val_loss);
  std::fprintf(out_, "maxvio_global");
  for (const auto& l : r.layers) std::fprintf(out_, " L%lld=%.3f", (long long)l.layer, l.maxvio);
  std::fprintf(out_, "\n");
  std::fflush(out_);
}

void ConsoleTrainObserver::on_save(const std::string& dir, int64_t step) {
  if (!tty_) std::fprintf(out_, "saved checkpoint at step %lld in %s\n", (long long)step, dir.c_str());
  std::fflush(out_);
}

void ConsoleTrainObserver::on_end(const EvalRecord* first, const EvalRecord* last, const StepRecord& last_step,
                                  double mean_tokens_per_s) {
  clear_status();
  std::fprintf(out_, "\nsummary after step %lld\n", (long long)last_step.step);
  if (first && last) {
    std::fprintf(out_, "  %-8s %18s %18s\n", "layer", "MaxVio first eval", "MaxVio last eval");
    for (size_t i = 0; i < last->layers.size() && i < first->layers.size(); ++i)
      std::fprintf(out_, "  %-8lld %12.3f @%-5lld %12.3f @%-5lld\n", (long long)last->layers[i].layer,
                   first->layers[i].maxvio, (long long)first->step, last->layers[i].maxvio, (long long)last->step);
    std::fprintf(out_, "  val loss   %.4f (step %lld) -> %.4f (step %lld)\n", first->val_loss, (long long)first->step,
                 last->val_loss, (long long)last->step);
  }
  std::fprintf(out_, "  train loss %.4f at the last step\n", last_step.loss);
  std::fprintf(out_, "  throughput %.0f tokens/s (mean over this run's steps)\n", mean_tokens_per_s);
  std::fflush(out_);
}

}  // namespace moe
