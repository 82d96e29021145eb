// `moe data synth`: write the embedded synthetic corpus (and its per-byte domain labels).
// `moe data prepare`: tokenize a corpus once into memory-mappable token files.
#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "commands.hpp"
#include "core/error.hpp"
#include "core/safetensors.hpp"
#include "train/prepare.hpp"
#include "train/synth.hpp"

namespace moe::app {

namespace {
struct DataFlags {
  std::string out;
  int64_t bytes = kDefaultSynthBytes;
  uint64_t seed = kDefaultSynthSeed;
  bool force = false;
  PrepareOptions prepare;
  bool prepare_force = false;
  int64_t threads = 0;
};

// "1.2 GB" style sizes for the progress line.
std::string size_text(double bytes) {
  char buf[32];
  if (bytes >= 1e9)
    std::snprintf(buf, sizeof buf, "%.2f GB", bytes / 1e9);
  else
    std::snprintf(buf, sizeof buf, "%.1f MB", bytes / 1e6);
  return buf;
}

int run_prepare(DataFlags& f) {
  PrepareOptions& o = f.prepare;
  for (const char* name : {"/train.bin", "/val.bin", "/meta.json"})
    if (path_exists(o.out + name) && !f.prepare_force)
      fail(o.out + name + ": exists; add --force to replace the prepared corpus");
  o.threads = int(f.threads > 0 ? f.threads : hardware_threads());
  const bool tty = ::isatty(STDERR_FILENO) != 0;
  const auto t0 = std::chrono::steady_clock::now();
  auto progress = [&](uint64_t done, uint64_t total) {
    if (!tty) return;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double rate = s > 0 ? double(done) / s : 0.0;
    const double eta = rate > 0 ? double(total - done) / rate : 0.0;
    std::fprintf(stderr, "\r\033[Kprepare: %s of %s (%.0f%%), %s/s, ETA %.0f s", size_text(double(done)).c_str(),
                 size_text(double(total)).c_str(), total ? 100.0 * double(done) / double(total) : 100.0,
                 size_text(rate).c_str(), eta);
  };
  const PrepareResult r = prepare_corpus(o, progress);
  if (tty) std::fprintf(stderr, "\r\033[K");
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("prepared %s from %lld file%s in %.1f s: train %lld tokens (%.2f bytes/token), val %lld tokens%s\n",
              o.out.c_str(), (long long)r.files, r.files == 1 ? "" : "s", s, (long long)r.train_tokens,
              r.train_tokens ? double(r.train_bytes) / double(r.train_tokens) : 0.0, (long long)r.val_tokens,
              o.tokenizer_dir.empty() ? " (byte tokens)" : "");
  return 0;
}

}  // namespace

Run add_data(CLI::App& app) {
  auto f = std::make_shared<DataFlags>();
  auto* cmd = app.add_subcommand("data", "Data tools");
  cmd->require_subcommand(1);
  auto* synth = cmd->add_subcommand("synth", "Write the synthetic four-domain corpus that train uses by default");
  synth->add_option("--out", f->out, "Output text file; domain labels go to FILE.domains (one byte per byte)")
      ->required();
  synth->add_option("--bytes", f->bytes, "Corpus size in bytes")
      ->capture_default_str()
      ->check(InRange(int64_t(1), int64_t(1) << 32));
  synth->add_option("--seed", f->seed, "Generator seed")->capture_default_str()->check(SeedValue());
  synth->add_flag("--force", f->force, "Replace FILE and FILE.domains if they exist");
  auto* prepare =
      cmd->add_subcommand("prepare", "Tokenize a corpus once into train.bin / val.bin that training memory-maps");
  prepare->add_option("--data", f->prepare.data, "Text files, directories (walked in sorted order) or .jsonl files")
      ->required();
  prepare->add_option("--tokenizer", f->prepare.tokenizer_dir,
                      "Directory with tokenizer.model (moe tokenizer train); default: byte tokens");
  prepare->add_option("--out", f->prepare.out, "Output directory")->required();
  prepare->add_option("--val-fraction", f->prepare.val_fraction, "The last fraction of the data that validates")
      ->capture_default_str()
      ->check(InRange(0, 1, true));
  prepare->add_option("--val", f->prepare.val, "Validation text (files, directories, .jsonl) instead of a fraction");
  prepare->add_option("--text-field", f->prepare.text_field, "Field of each .jsonl line that holds the text")
      ->capture_default_str();
  prepare->add_option("-t,--threads", f->threads, "Threads that tokenize (0: all cores)")->check(ThreadCount());
  prepare->add_flag("--force", f->prepare_force, "Replace a prepared corpus in --out");
  return [f, prepare]() {
    if (prepare->parsed()) return run_prepare(*f);
    const bool replaced = check_output_file(f->out, f->force) | check_output_file(f->out + ".domains", f->force);
    const SynthCorpus corpus = make_synth_corpus(f->bytes, f->seed);
    write_file_atomic(f->out, corpus.text);
    write_file_atomic(f->out + ".domains", std::string(corpus.domain.begin(), corpus.domain.end()));
    std::size_t per_domain[kNumDomains] = {};
    for (uint8_t d : corpus.domain) ++per_domain[d];
    std::printf("%s %s (%lld bytes, seed %llu) and %s.domains\n", replaced ? "replaced" : "wrote", f->out.c_str(),
                (long long)f->bytes, (unsigned long long)f->seed, f->out.c_str());
    for (int d = 0; d < kNumDomains; ++d)
      std::printf("  %-11s %5.1f%%\n", domain_name(d), 100.0 * double(per_domain[d]) / double(corpus.domain.size()));
    return 0;
  };
}

}  // namespace moe::app
