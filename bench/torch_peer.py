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
import os
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
    """RoPE over head_dim; interleave=True rotates adjacent pairs (x_2i, x_2i+1) (DeepSeek-V3's MLA
    default), False rotates (x_i, x_i+hd/2) (rotate_half)."""

    def __init__(self, head_dim, max_pos, theta, interleave=False):
        inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.outer(torch.arange(max_pos, dtype=torch.float64), inv_freq)
        self.interleave = interleave
        emb = angles.repeat_interleave(2, dim=-1) if interleave else torch.cat((angles, angles), dim=-1)
        self.cos64, self.sin64 = emb.cos(), emb.sin()
        self.cos, self.sin = self.cos64.float(), self.sin64.float()

    def apply(self, x, pos0):  # x (B, heads, T, hd)
        T = x.shape[2]
        cos, sin = (self.cos64, self.sin64) if x.dtype == torch.float64 else (self.cos, self.sin)
        cos, sin = cos[pos0:pos0 + T], sin[pos0:pos0 + T]
        if self.interleave:
            x1, x2 = x[..., 0::2], x[..., 1::2]
            return x * cos + torch.stack((-x2, x1), dim=-1).flatten(-2) * sin
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


class MlaAttention(nn.Module):
    """DeepSeek-V3 multi-head latent attention, written like Hugging Face's DeepseekV3Attention:
    training materialises k = [k_nope | k_rope broadcast to every head] and v per head.

    Decode cache (`cache_kind`): "kv" (the default) caches the materialised, rotated k and v per head
    (H*(dn+dr+dv) floats per token and layer) and expands only the new token with kv_b_proj;
    "latent" caches rmsnorm(c_kv) and the rotated k_rope (r_kv+dr floats) and re-expands the whole
    cache with kv_b_proj every step. "kv" is the faster one in eager PyTorch (the re-expansion costs
    S*r_kv*H*(dn+dv) multiply-adds per step and layer, far more than the attention itself), so the
    peer measures with it; `--mla-cache latent` measures the other."""

    cache_kind = "kv"

    def __init__(self, c):
        super().__init__()
        d, self.h = c["hidden_size"], c["num_attention_heads"]
        self.dn, self.dr, self.dv = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
        self.rkv, self.rq = c["kv_lora_rank"], c.get("q_lora_rank")
        qk = self.dn + self.dr
        if self.rq:
            self.q_a_proj = nn.Linear(d, self.rq, bias=False)
            self.q_a_layernorm = RMSNorm(self.rq, 1e-6)
            self.q_b_proj = nn.Linear(self.rq, self.h * qk, bias=False)
        else:
            self.q_proj = nn.Linear(d, self.h * qk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(d, self.rkv + self.dr, bias=False)
        self.kv_a_layernorm = RMSNorm(self.rkv, 1e-6)
        self.kv_b_proj = nn.Linear(self.rkv, self.h * (self.dn + self.dv), bias=False)
        self.o_proj = nn.Linear(self.h * self.dv, d, bias=False)
        self.scale = 1.0 / math.sqrt(qk)

    def expand(self, latent):  # (B, S, r_kv) -> k_nope (B, H, S, dn), v (B, H, S, dv)
        B, S, _ = latent.shape
        kv = self.kv_b_proj(latent).view(B, S, self.h, self.dn + self.dv).transpose(1, 2)
        return kv.split([self.dn, self.dv], dim=-1)

    def forward(self, x, rope, cache=None, pos0=0):
        B, T, _ = x.shape
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if self.rq else self.q_proj(x)
        q = q.view(B, T, self.h, self.dn + self.dr).transpose(1, 2)
        q_nope, q_rope = q.split([self.dn, self.dr], dim=-1)
        q_rope = rope.apply(q_rope, pos0)
        c_kv, k_rope = self.kv_a_proj_with_mqa(x).split([self.rkv, self.dr], dim=-1)
        latent = self.kv_a_layernorm(c_kv)
        k_rope = rope.apply(k_rope.view(B, 1, T, self.dr), pos0)  # one head shared by all heads
        if cache is not None and self.cache_kind == "latent":
            if "latent" in cache:
                latent = torch.cat([cache["latent"], latent], dim=1)
                k_rope = torch.cat([cache["k_rope"], k_rope], dim=2)
            cache["latent"], cache["k_rope"] = latent, k_rope
        k_nope, v = self.expand(latent)
        k = torch.cat([k_nope, k_rope.expand(B, self.h, k_nope.shape[2], self.dr)], dim=-1)
        if cache is not None and self.cache_kind == "kv":
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        q = torch.cat([q_nope, q_rope], dim=-1)
        scores = q @ k.transpose(-1, -2) * self.scale
        S = k.shape[2]
        if T > 1:
            mask = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)
            scores = scores.masked_fill(~mask, float("-inf"))
        out = scores.softmax(-1) @ v
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.h * self.dv))


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
        self.self_attn = MlaAttention(c) if is_mla(c) else Attention(c)
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
        self.rope = Rope(c["head_dim"], c["max_position_embeddings"], c["rope_theta"],
                         interleave=is_mla(c) and c.get("rope_interleave", True))
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=c["initializer_range"])

    def forward(self, tokens, caches=None, pos0=0):
        x = self.embed_tokens(tokens)
        for i, layer in enumerate(self.layers):
            x = layer(x, self.rope, None if caches is None else caches[i], pos0)
        return self.lm_head(self.norm(x))


def is_mla(c):
    return c.get("kv_lora_rank") is not None


def load_config(path):
    with open(path) as f:
        j = json.load(f)
    model = j["model"] if "model" in j else j
    train = j.get("train", {})
    c = dict(model)
    if is_mla(c):  # RoPE runs over the rope part of q/k; every head has its own k_nope and v
        c["head_dim"] = c["qk_rope_head_dim"]
        c["num_key_value_heads"] = c["num_attention_heads"]
    c.setdefault("head_dim", c["hidden_size"] // c["num_attention_heads"])
    return c, train


def stat(values):
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def reference_mla(attn, x, pos, theta, interleave):
    """The MLA formula written out per head and position (no batching, complex-number RoPE), for
    --selfcheck. x (T, d) float64 at positions pos..pos+T-1, attending causally among themselves."""
    dn, dr, dv, H = attn.dn, attn.dr, attn.dv, attn.h

    def rope(v, p):  # v (dr,)
        freqs = theta ** (-torch.arange(0, dr, 2, dtype=torch.float64) / dr)
        rot = torch.polar(torch.ones_like(freqs), p * freqs)
        if interleave:
            z = torch.complex(v[0::2], v[1::2]) * rot
            return torch.stack((z.real, z.imag), dim=-1).flatten()
        z = torch.complex(v[:dr // 2], v[dr // 2:]) * rot
        return torch.cat((z.real, z.imag))

    def rms(v, w):
        return v / torch.sqrt((v * v).mean() + 1e-6) * w

    T = x.shape[0]
    out = []
    for t in range(T):
        heads = []
        for h in range(H):
            def q_of(i):
                if attn.rq:
                    a = rms(attn.q_a_proj.weight @ x[i], attn.q_a_layernorm.weight)
                    qq = attn.q_b_proj.weight @ a
                else:
                    qq = attn.q_proj.weight @ x[i]
                return qq.view(H, dn + dr)[h]

            def kv_of(i):
                ckv = attn.kv_a_proj_with_mqa.weight @ x[i]
                lat = rms(ckv[:attn.rkv], attn.kv_a_layernorm.weight)
                kv = (attn.kv_b_proj.weight @ lat).view(H, dn + dv)[h]
                return kv[:dn], rope(ckv[attn.rkv:], pos + i), kv[dn:]

            q = q_of(t)
            qn, qr = q[:dn], rope(q[dn:], pos + t)
            scores, values = [], []
            for i in range(t + 1):
                kn, kr, v = kv_of(i)
                scores.append((qn @ kn + qr @ kr) / math.sqrt(dn + dr))
                values.append(v)
            p = torch.stack(scores).softmax(0)
            heads.append(sum(pi * v for pi, v in zip(p, values)))
        out.append(attn.o_proj.weight @ torch.cat(heads))
    return torch.stack(out)


def selfcheck():
    """Float64 checks of the MLA path on random tiny configs: one layer's attention against the
    formula written out per head; the full model's logits decoded token by token with the KV cache
    (both cache kinds) against the full forward's logits."""
    torch.manual_seed(1)
    failures = 0
    for q_lora in (None, 12):
        for interleave in (True, False):
            c = {"vocab_size": 32, "hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 3,
                 "intermediate_size": 40, "moe_intermediate_size": 8, "first_k_dense_replace": 1,
                 "n_shared_experts": 1, "n_routed_experts": 4, "num_experts_per_tok": 2, "n_group": 2,
                 "topk_group": 1, "routed_scaling_factor": 1.0, "norm_topk_prob": True,
                 "scoring_func": "sigmoid", "rms_norm_eps": 1e-6, "rope_theta": 500.0,
                 "max_position_embeddings": 32, "initializer_range": 0.3, "q_lora_rank": q_lora,
                 "kv_lora_rank": 10, "qk_nope_head_dim": 6, "qk_rope_head_dim": 4, "v_head_dim": 5,
                 "rope_interleave": interleave}
            c["head_dim"], c["num_key_value_heads"] = c["qk_rope_head_dim"], c["num_attention_heads"]
            model = Model(c).double().eval()
            for p in model.parameters():  # non-trivial norm weights too
                if p.dim() == 1:
                    nn.init.uniform_(p, 0.5, 1.5)
            tokens = torch.randint(0, c["vocab_size"], (1, 12))
            with torch.no_grad():
                attn = model.layers[0].self_attn
                x = torch.randn(1, 7, c["hidden_size"], dtype=torch.float64)
                err = (attn(x, model.rope, None, 3)[0] - reference_mla(attn, x[0], 3, c["rope_theta"], interleave)).abs().max().item()
                ok = err < 1e-12
                failures += not ok
                print(f"q_lora_rank={q_lora} rope_interleave={interleave}: attention vs formula "
                      f"max |diff| {err:.2e} {'ok' if ok else 'FAIL'}")
                full = model(tokens)
                for kind in ("kv", "latent"):
                    MlaAttention.cache_kind = kind
                    caches = [dict() for _ in model.layers]
                    steps = [model(tokens[:, :5], caches, 0)]
                    for i in range(5, tokens.shape[1]):
                        steps.append(model(tokens[:, i:i + 1], caches, i))
                    err = (torch.cat(steps, dim=1) - full).abs().max().item()
                    ok = err < 1e-12
                    failures += not ok
                    print(f"q_lora_rank={q_lora} rope_interleave={interleave}: decode with {kind} cache "
                          f"vs full forward max |diff| {err:.2e} {'ok' if ok else 'FAIL'}")
    MlaAttention.cache_kind = "kv"
    print("selfcheck", "FAILED" if failures else "passed")
    return 1 if failures else 0


def loaded_blas():
    """The BLAS library this process actually mapped (Debian's libblas.so.3 is an alternative that may
    point at the reference BLAS, 50x slower): its resolved path, or "none found"."""
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "blas" in os.path.basename(line.rstrip()).lower()}
    paths = sorted(os.path.realpath(p) for p in paths if p.startswith("/"))
    return ", ".join(paths) if paths else "none found"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/small.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="training steps per repetition")
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=0, help="default: the config's train.batch (or 16)")
    ap.add_argument("--seq", type=int, default=0, help="default: the config's train.seq (or 256)")
    ap.add_argument("--mla-cache", choices=("kv", "latent"), default=MlaAttention.cache_kind,
                    help="MLA decode cache: materialised k/v per head (default) or latent + k_rope")
    ap.add_argument("--selfcheck", action="store_true",
                    help="check the MLA forward numerically (float64) and exit")
    args = ap.parse_args()
    if args.selfcheck:
        sys.exit(selfcheck())
    MlaAttention.cache_kind = args.mla_cache
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

    def decode(prompt_len, n):
        """Greedy batch-1 decoding after a prompt of prompt_len tokens: tokens per second over the n
        timed steps, per repetition (after one warm-up), and the MiB the KV cache holds at the end."""
        rates = []
        with torch.no_grad():
            for rep in range(args.reps + 1):
                caches = [dict() for _ in model.layers]
                logits = model(data[:prompt_len].unsqueeze(0), caches, 0)
                t0 = time.perf_counter()
                for i in range(n):
                    nxt = logits[0, -1].argmax().view(1, 1)
                    logits = model(nxt, caches, prompt_len + i)
                if rep > 0:
                    rates.append(n / (time.perf_counter() - t0))
        cache_bytes = sum(t.numel() * t.element_size() for cache in caches for t in cache.values())
        return rates, cache_bytes / (1 << 20)

    max_pos = c["max_position_embeddings"]
    prompt_len = min(16, max_pos // 2)
    decode_rates, _ = decode(prompt_len, min(args.decode_tokens, max_pos - prompt_len))
    # Decode at a long context (as `moe bench`): the timed steps are the last n before context C.
    at_context = []
    for C in (256, max_pos):
        if C > max_pos or (at_context and at_context[-1]["context"] == C):
            continue
        n = min(args.decode_tokens, C // 2)
        rates, mib = decode(C - n, n)
        at_context.append({"context": C, "tokens_per_s": stat(rates), "kv_cache_mib": mib})

    out = {"peer": "pytorch", "torch": torch.__version__, "blas": loaded_blas(), "threads": torch.get_num_threads(),
           "config": args.config, "batch": B, "seq": T,
           "train_tokens_per_s": stat(train_rates), "decode_tokens_per_s": stat(decode_rates),
           "decode_at_context": at_context}
    if is_mla(c):
        out["mla_cache"] = MlaAttention.cache_kind
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
