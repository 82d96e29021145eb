// Text generation from a checkpoint: prompts prefilled in one forward each, then decoded together,
// one token per sequence per step, with a per-sequence seeded sampler.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/compute.hpp"
#include "core/tokenizer.hpp"
#include "infer/decode.hpp"
#include "infer/sampler.hpp"
#include "model/model.hpp"

namespace moe {

enum class DraftPrecision { automatic, int8, f32 };

// Whether drafting with int8 weights is faster than with f32 for this model on `threads` threads:
// int8 reads a quarter of the bytes but costs a quantization and a rescale per product, which only
// pays when the module's weights do not stay in the cores' private caches between tokens (measured
// with moe bench: small-v3's 7.2 MB module drafts 10-20 % faster in int8; with tiny-v3's 0.7 MB one,
// which stays in L2, the two are within 2 %, f32 ahead). The rule: the module's FFN and eh_proj in
// f32 exceed the L2 caches of the threads (1 MiB each where the system does not say).
bool int8_draft_pays(const ModelConfig& c, int64_t threads);

// Refuses --draft mtp (draft_max > 0) on a model without the MTP module, in one line.
void check_draft_supported(const ModelConfig& c, int64_t draft_max);

struct GenerateRequest {
  std::vector<std::string> prompts;  // an empty prompt starts from a newline
  int64_t n_predict = 256;
  SamplerConfig sampler;
  uint64_t seed = 0;
  // Self-speculative decoding with the MTP module: up to this many drafted tokens per step, each
  // verified by the main model (0: plain decoding). The output follows the main model exactly:
  // greedy text is the same, sampled text has the same distribution.
  int64_t draft_max = 0;
  // The draft's precision: int8 (the MTP module's FFN and eh_proj quantized, core/quant.hpp), f32,
  // or automatic (int8_draft_pays). The main model verifies every draft in f32, so greedy text is
  // plain greedy decoding's and sampled text has its distribution either way; the acceptance rate
  // (and, when sampling, which text a given seed gives) depends on the draft.
  DraftPrecision draft_precision = DraftPrecision::automatic;
  Tokenizer tokenizer;  // the model's (checkpoint_tokenizer): prompts are encoded, tokens decoded with it
};

struct GenerateOutput {
  std::string prompt;  // as used (after truncation to the context, if any)
  std::string text;    // generated text (the tokens' bytes)
  int64_t prompt_tokens = 0;
  int64_t generated = 0;
  bool hit_context_limit = false;  // stopped at max_position_embeddings before n_predict
  bool prompt_truncated = false;   // the prompt left no room to generate; its start was dropped
  int64_t prompt_cut = 0;          // tokens dropped from its start
};

struct GenerateTimings {
  // setup: the decoder's buffers (KV cache for the whole context) and a one-token warm-up forward
  // that pays oneDNN's one-time kernel generation, so prompt_seconds is the prefill alone.
  double setup_seconds = 0, prompt_seconds = 0, generate_seconds = 0;
  int64_t prompt_tokens = 0, generated_tokens = 0;
  // Speculative decoding: tokens drafted and accepted, and main-model steps after the prompt (one
  // per verification); the draft's precision as used (automatic resolved).
  int64_t drafted = 0, accepted = 0, main_steps = 0;
  // Per sequence: its steps summed over the main-model steps (several sequences share a step) and
  // the tokens those steps gave it (a verification: the accepted drafts and one more).
  int64_t sequence_steps = 0, step_tokens = 0;
  bool draft_int8 = false;
  // Where decoding's time goes: inside the main model's steps (plain, or verification) and the
  // MTP module's draft steps; the routed experts the main steps read (distinct per MoE layer,
  // summed over layers and steps). What is left of generate_seconds is sampling and bookkeeping.
  double step_seconds = 0, draft_seconds = 0;
  int64_t experts_read = 0;

  double acceptance() const { return drafted > 0 ? double(accepted) / double(drafted) : 0.0; }
  // Tokens per main-model step and sequence (at most draft_max + 1).
  double tokens_per_step() const { return sequence_steps > 0 ? double(step_tokens) / double(sequence_steps) : 0.0; }
};

// on_token(sequence index, token) is called as each token is produced (for streaming).
std::vector<GenerateOutput> generate(ComputeContext& ctx, const Model& model, const GenerateRequest& request,
                                     const std::function<void(size_t, int32_t)>& on_token, GenerateTimings& timings,
                                     ExpertTally* tally);

// The eval protocol of `moe eval`: windows x = tok[s : s+T], y = tok[s+1 : s+T+1] for
// s = 0, T, 2T, ..., the last shorter window kept; the mean is over every predicted position.
struct EvalResult {
  double loss = 0, perplexity = 0;  // per token (nats)
  int64_t tokens = 0;               // predicted positions = tokens - 1
  double text_bytes = 0;            // UTF-8 bytes of the predicted tokens
  double bits_per_byte = 0;         // total cross-entropy in bits / text_bytes
  // Models with the MTP module: its mean CE of t_{i+2} over the positions i = 0 .. T'-2 of every
  // window of T' (the same windows as `loss`).
  double mtp_loss = 0;
  int64_t mtp_tokens = 0;
};
// Called after each forward with the workspace and the run of tokens [first_token, first_token +
// tokens) it holds, in order, at the start of the workspace (routing analysis reads it there).
using RoutingSink = std::function<void(const Workspace& ws, int64_t first_token, int64_t tokens)>;
// progress(scored, total) after each batch of windows: predicted positions so far, of all.
using EvalProgress = std::function<void(int64_t scored, int64_t total)>;
// Scores every token of `tokens` but the first in consecutive windows of T; `tokenizer` gives each
// token's bytes for bits per byte.
EvalResult evaluate_tokens(ComputeContext& ctx, const Model& model, const std::vector<int32_t>& tokens, int64_t T,
                           const Tokenizer& tokenizer, ExpertTally* tally, const RoutingSink& sink = {},
                           const EvalProgress& progress = {});
// The same over byte tokens.
EvalResult evaluate_bytes(ComputeContext& ctx, const Model& model, const std::vector<uint8_t>& bytes, int64_t T,
                          ExpertTally* tally, const RoutingSink& sink = {}, const EvalProgress& progress = {});

}  // namespace moe
