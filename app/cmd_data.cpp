// `moe data synth`: write the embedded synthetic corpus (and its per-byte domain labels).
#include <cstdio>

#include "commands.hpp"
#include "core/error.hpp"
#include "core/safetensors.hpp"
#include "train/synth.hpp"

namespace moe::app {

namespace {
struct DataFlags {
  std::string out;
  int64_t bytes = kDefaultSynthBytes;
  uint64_t seed = kDefaultSynthSeed;
  bool force = false;
};
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
  return [f]() {
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
