#!/usr/bin/python3
"""The PyTorch peer of `moe bench`: the same DeepSeek-V3-style MoE transformer written the way a
user would write it in eager PyTorch (Hugging Face-style MoE: loop over experts, gather their
tokens, index_add_ back), measured the same way: training tok/s (forward + backward + AdamW +
loss-free bias update at the config's batch x seq) and KV-cached decode tok/s (batch 1).

Reads our config file ({"model": ..., "train": ...}) or a checkpoint's flat config.json.
Run with Debian's /usr/bin/python3 and python3-torch; the BLAS is libopenblas0-openmp.
"""
import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Rope:
    def __init__(self, head_dim, max_pos, theta):
        inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.outer(torch.arange(max_pos, dtype=torch.float64), inv_freq)
        emb = torch.cat((angles, angles), dim=-1)
        self.cos, self.sin = emb.cos().float(), emb.sin().float()

    def apply(self, x, pos0):  # x (B, heads, T, hd)
        T = x.shape[2]
        cos, sin = self.cos[pos0:pos0 + T], self.sin[pos0:pos0 + T]
        return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.h, self.kv, self.hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        d = c["hidden_size"]
        self.q_proj = nn.Linear(d, self.h * self.hd, bias=False)
        self.k_proj = nn.Linear(d, self.kv * self.hd, bias=False)
        self.v_proj = nn.Linear(d, self.kv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.h * self.hd, d, bias=False)

    def forward(self, x, rope, cache=None, pos0=0):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.kv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.kv, self.hd).transpose(1, 2)
        q, k = rope.apply(q, pos0), rope.apply(k, pos0)
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        g = self.h // self.kv
        k = k.repeat_interleave(g, dim=1)
        v = v.repeat_interleave(g, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.hd)
        S = k.shape[2]
        if T > 1:
            mask = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)
            scores = scores.masked_fill(~mask, float("-inf"))
        out = scores.softmax(-1) @ v
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.h * self.hd))


class MLP(nn.Module):
    def __init__(self, d, inter):
        super().__init__()
        self.gate_proj = nn.Linear(d, inter, bias=False)
        self.up_proj = nn.Linear(d, inter, bias=False)
        self.down_proj = nn.Linear(inter, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoE(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, self.E, self.K = c["hidden_size"], c["n_routed_experts"], c["num_experts_per_tok"]
        self.n_group, self.topk_group = c["n_group"], c["topk_group"]
        self.norm, self.scale = c["norm_topk_prob"], c["routed_scaling_factor"]
        self.sigmoid = c["scoring_func"] == "sigmoid"
        self.gate = nn.Linear(d, self.E, bias=False)
        self.register_buffer("e_score_correction_bias", torch.zeros(self.E))
        self.experts = nn.ModuleList([MLP(d, c["moe_intermediate_size"]) for _ in range(self.E)])
        self.shared_experts = (MLP(d, c["n_shared_experts"] * c["moe_intermediate_size"])
                               if c["n_shared_experts"] > 0 else None)
        self.last_counts = None

    def route(self, x):
        logits = F.linear(x, self.gate.weight)
        scores = logits.sigmoid() if self.sigmoid else logits.softmax(-1)
        keys = scores.detach() + self.e_score_correction_bias
        if self.n_group > 1:
            grouped = keys.view(-1, self.n_group, self.E // self.n_group)
            group_scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1)[0].sum(-1)
            group_idx = group_scores.topk(self.topk_group, dim=-1)[1]
            group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
            mask = group_mask.unsqueeze(-1).expand_as(grouped).reshape(-1, self.E)
            keys = keys.masked_fill(mask == 0, float("-inf"))
        idx = keys.topk(self.K, dim=-1)[1]
        weights = scores.gather(1, idx)
        if self.norm:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return idx, weights * self.scale

    def forward(self, x):
        shape = x.shape
        x = x.view(-1, shape[-1])
        idx, weights = self.route(x)
        self.last_counts = torch.bincount(idx.flatten(), minlength=self.E)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(idx == e)
            if token.numel() == 0:
                continue
            y = expert(x[token]) * weights[token, slot].unsqueeze(-1)
            out.index_add_(0, token, y)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out.view(shape)


class Layer(nn.Module):
    def __init__(self, c, moe):
        super().__init__()
        self.input_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.mlp = MoE(c) if moe else MLP(c["hidden_size"], c["intermediate_size"])

    def forward(self, x, rope, cache=None, pos0=0):
        h = x + self.self_attn(self.input_layernorm(x), rope, cache, pos0)
        return h + self.mlp(self.post_attention_layernorm(h))


class Model(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList([Layer(c, l >= c["first_k_dense_replace"]) for l in range(c["num_hidden_layers"])])
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        self.rope = Rope(c["head_dim"], c["max_position_embeddings"], c["rope_theta"])
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=c["initializer_range"])

    def forward(self, tokens, caches=None, pos0=0):
        x = self.embed_tokens(tokens)
        for i, layer in enumerate(self.layers):
            x = layer(x, self.rope, None if caches is None else caches[i], pos0)
        return self.lm_head(self.norm(x))


def load_config(path):
    with open(path) as f:
        j = json.load(f)
    model = j["model"] if "model" in j else j
    train = j.get("train", {})
    c = dict(model)
    c.setdefault("head_dim", c["hidden_size"] // c["num_attention_heads"])
    return c, train


def stat(values):
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/small.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="training steps per repetition")
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=0, help="default: the config's train.batch (or 16)")
    ap.add_argument("--seq", type=int, default=0, help="default: the config's train.seq (or 256)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    c, train = load_config(args.config)
    B = args.batch or train.get("batch", 16)
    T = args.seq or train.get("seq", 256)
    model = Model(c)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": train.get("weight_decay", 0.1)},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=train.get("lr", 1e-3), betas=(0.9, 0.95), eps=1e-8)
    moe_layers = [l.mlp for l in model.layers if isinstance(l.mlp, MoE)]
    data = torch.randint(0, 256, (100000,))

    def train_step():
        starts = torch.randint(0, data.numel() - T - 1, (B,))
        batch = torch.stack([data[s:s + T + 1] for s in starts])
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.get("grad_clip", 1.0))
        opt.step()
        with torch.no_grad():  # loss-free balancing
            for m in moe_layers:
                counts = m.last_counts.float()
                m.e_score_correction_bias += train.get("bias_rate", 1e-3) * torch.sign(counts.mean() - counts)

    for _ in range(2):
        train_step()
    train_rates = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            train_step()
        train_rates.append(B * T * args.steps / (time.perf_counter() - t0))

    model.eval()
    prompt_len = min(16, c["max_position_embeddings"] // 2)
    n = min(args.decode_tokens, c["max_position_embeddings"] - prompt_len)
    decode_rates = []
    with torch.no_grad():
        for rep in range(args.reps + 1):
            caches = [dict() for _ in model.layers]
            logits = model(data[:prompt_len].unsqueeze(0), caches, 0)
            t0 = time.perf_counter()
            for i in range(n):
                nxt = logits[0, -1].argmax().view(1, 1)
                logits = model(nxt, caches, prompt_len + i)
            if rep > 0:
                decode_rates.append(n / (time.perf_counter() - t0))

    json.dump({"peer": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
               "config": args.config, "batch": B, "seq": T,
               "train_tokens_per_s": stat(train_rates), "decode_tokens_per_s": stat(decode_rates)},
              sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
