// What `moe train` shows in the terminal: a compact start-up summary (the full config is in the run
// directory), a live status line redrawn in place on a TTY and fitted to its width (one plain line
// every log_every steps otherwise), evaluations and saves as they happen, and a closing summary
// that says how the run ended and how to continue it.
#pragma once
#include <cstdio>
#include <string>

#include "train/trainer.hpp"

namespace moe {

class ConsoleTrainObserver : public TrainObserver {
 public:
  // width: the terminal's columns for the status line (0: ask the terminal of `out` at each redraw).
  ConsoleTrainObserver(FILE* out, bool tty, int64_t log_every, int width = 0);
  void on_start(const RunStart& start) override;
  void on_step(const StepRecord& record, double last_val_loss) override;
  void on_eval(const EvalRecord& record) override;
  void on_save(const std::string& dir, int64_t step) override;
  void on_end(const RunEnd& end) override;
  bool output_closed() const override { return closed_; }

 private:
  void clear_status();
  void flush();  // notes a closed output (EPIPE) instead of failing
  int columns() const;
  FILE* out_;
  bool tty_;
  int64_t log_every_;
  int width_;
  bool status_shown_ = false, closed_ = false;
  double elapsed_ = 0.0;
  int64_t steps_done_ = 0;
};

// The status line's fields for a terminal `width` columns wide: fields are dropped, least useful
// first (lr, mtp, tok/s, maxvio, val, eta), until the line fits in width - 1 columns (the last
// column would wrap on some terminals). Step and loss always stay.
std::string status_line(const StepRecord& r, double last_val_loss, double eta_seconds, int width);

}  // namespace moe
