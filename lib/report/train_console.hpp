// What `moe train` shows in the terminal: a live status line redrawn in place on a TTY (one plain
// line every log_every steps otherwise), evaluations as they happen, and a closing summary table.
#pragma once
#include <cstdio>
#include <string>

#include "train/trainer.hpp"

namespace moe {

class ConsoleTrainObserver : public TrainObserver {
 public:
  ConsoleTrainObserver(FILE* out, bool tty, int64_t log_every);
  void on_start(const Config& effective, const std::string& out_dir, const std::string& data_source,
                int64_t start_step) override;
  void on_step(const StepRecord& record, double last_val_loss) override;
  void on_eval(const EvalRecord& record) override;
  void on_save(const std::string& dir, int64_t step) override;
  void on_end(const EvalRecord* first_eval, const EvalRecord* last_eval, const StepRecord& last_step,
              double mean_tokens_per_s) override;

 private:
  void clear_status();
  FILE* out_;
  bool tty_;
  int64_t log_every_;
  bool status_shown_ = false;
  double elapsed_ = 0.0;
  int64_t steps_done_ = 0;
};

}  // namespace moe
