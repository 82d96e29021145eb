// Token embedding lookup and the softmax cross-entropy loss at the head.
#pragma once
#include <cstdint>

namespace moe {

// tokens (rows) -> x (rows, D) = table[tokens].
void embedding_forward(const float* table, const int32_t* tokens, float* x, int64_t rows, int64_t D);
// d_table[tokens[r]] += dx[r]. Parallel over the hidden dimension so no two threads touch a row twice.
void embedding_backward(const int32_t* tokens, const float* dx, float* d_table, int64_t rows, int64_t D);

// logits (rows, V), targets (rows) -> returns Σ -log softmax(logits)[target] (a sum, not a mean).
// When d_logits is given, writes d(scale · Σ loss)/d logits into it (may alias logits). A row whose
// target is kIgnoreTarget contributes nothing (its gradient row is zero): the multi-token-prediction
// loss has no target at a sequence's last position.
constexpr int32_t kIgnoreTarget = -1;
double cross_entropy_forward_backward(const float* logits, const int32_t* targets, float* d_logits, int64_t rows,
                                      int64_t V, float scale);

}  // namespace moe
