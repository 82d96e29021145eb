#!/usr/bin/env python3
"""Self-checks for hf_deepseek_v3.py.  Run: python3 tests/interop/selftest.py   (exit 0 = all passed)

Contains a second, deliberately naive implementation of the same model (plain loops over tokens, heads, key
positions, rotary pairs and experts; RoPE written directly as rotation of (x_2i, x_2i+1) or (x_i, x_i+d/2) pairs;
router via Python sorting) which must agree with the vectorised one to 1e-10 in float64.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_deepseek_v3 as R  # noqa: E402  (re-execs under /usr/bin/python3 if torch is not importable)

import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

TOOL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_deepseek_v3.py")
FAILS = []


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what)
    if not cond:
        FAILS.append(what)


def tiny_config(q_lora_rank=6, rope_interleave=True, mtp=1, rms_norm_eps=1e-5, **kw):
    c = {"model_type": "deepseek_v3", "vocab_size": 259, "hidden_size": 16, "num_hidden_layers": 3,
         "num_attention_heads": 3, "num_key_value_heads": 3, "intermediate_size": 20, "moe_intermediate_size": 6,
         "first_k_dense_replace": 1, "n_shared_experts": 2, "n_routed_experts": 8, "num_experts_per_tok": 3,
         "n_group": 4, "topk_group": 2, "routed_scaling_factor": 2.5, "norm_topk_prob": True,
         "scoring_func": "sigmoid", "rms_norm_eps": rms_norm_eps, "rope_theta": 50.0,
         "max_position_embeddings": 64, "q_lora_rank": q_lora_rank, "kv_lora_rank": 5, "qk_nope_head_dim": 4,
         "qk_rope_head_dim": 6, "v_head_dim": 5, "rope_interleave": rope_interleave,
         "num_nextn_predict_layers": mtp, "initializer_range": 0.02, "hidden_act": "silu",
         "attention_bias": False, "tie_word_embeddings": False, "rope_scaling": None}
    c.update(kw)
    return c


# ----------------------------------------------------------------------------------------------------------------
# naive implementation
# ----------------------------------------------------------------------------------------------------------------
def n_rms(v, w, eps):
    ms = sum(float(a) * float(a) for a in v) / len(v)
    return w * (v / math.sqrt(ms + eps))


def n_silu(v):
    return torch.tensor([float(a) / (1.0 + math.exp(-float(a))) for a in v], dtype=v.dtype)


def n_mlp(P, pre, v):
    g = P[pre + "gate_proj.weight"].mv(v)
    u = P[pre + "up_proj.weight"].mv(v)
    return P[pre + "down_proj.weight"].mv(n_silu(g) * u)


def n_rotate(x, pos, theta, interleave):
    """Rotate pairs of a rope vector by angle pos * theta^(-2i/d).  interleave: pairs (x_2i, x_2i+1);
    else pairs (x_i, x_i+d/2).  Output keeps the natural layout (pair members stay in place)."""
    d = len(x)
    y = x.clone()
    for i in range(d // 2):
        ang = pos * theta ** (-2.0 * i / d)
        c, s = math.cos(ang), math.sin(ang)
        a, b = (2 * i, 2 * i + 1) if interleave else (i, i + d // 2)
        y[a] = x[a] * c - x[b] * s
        y[b] = x[a] * s + x[b] * c
    return y


def n_router(P, pre, cfg, v):
    E, G = cfg.n_routed_experts, cfg.n_group
    per = E // G
    W = P[pre + "mlp.gate.weight"]
    bias = P[pre + "mlp.gate.e_score_correction_bias"]
    scores = [1.0 / (1.0 + math.exp(-float((W[e] * v).sum()))) for e in range(E)]
    biased = [scores[e] + float(bias[e]) for e in range(E)]
    gsum = []
    for g in range(G):
        vals = sorted(biased[g * per:(g + 1) * per], reverse=True)
        gsum.append(vals[0] + vals[1])
    groups = sorted(range(G), key=lambda g: (-gsum[g], g))[:cfg.topk_group]
    cand = [biased[e] if (e // per) in groups else 0.0 for e in range(E)]
    chosen = sorted(range(E), key=lambda e: (-cand[e], e))[:cfg.num_experts_per_tok]
    ws = [scores[e] for e in chosen]
    if cfg.norm_topk_prob:
        den = sum(ws) + 1e-20
        ws = [w / den for w in ws]
    return chosen, [w * cfg.routed_scaling_factor for w in ws]


def n_layer(P, cfg, layer, xs, latent_eps=1e-6):
    """xs: list of [D] vectors (positions 0..T-1).  Returns list of outputs."""
    pre = f"model.layers.{layer}."
    H, dn, dr, dv = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    scale = 1.0 / math.sqrt(dn + dr)
    T = len(xs)
    a_in = [n_rms(x, P[pre + "input_layernorm.weight"], cfg.rms_norm_eps) for x in xs]
    qs, knope, krope, vs = [], [], [], []
    for t in range(T):
        x = a_in[t]
        if cfg.q_lora_rank is None:
            q = P[pre + "self_attn.q_proj.weight"].mv(x)
        else:
            q = P[pre + "self_attn.q_b_proj.weight"].mv(
                n_rms(P[pre + "self_attn.q_a_proj.weight"].mv(x), P[pre + "self_attn.q_a_layernorm.weight"],
                      latent_eps))
        ckv = P[pre + "self_attn.kv_a_proj_with_mqa.weight"].mv(x)
        c, kr = ckv[:cfg.kv_lora_rank], ckv[cfg.kv_lora_rank:]
        kv = P[pre + "self_attn.kv_b_proj.weight"].mv(n_rms(c, P[pre + "self_attn.kv_a_layernorm.weight"],
                                                             latent_eps))
        qh, kn, vh = [], [], []
        for h in range(H):
            qq = q[h * (dn + dr):(h + 1) * (dn + dr)]
            qh.append((qq[:dn], n_rotate(qq[dn:], t, cfg.rope_theta, cfg.rope_interleave)))
            kk = kv[h * (dn + dv):(h + 1) * (dn + dv)]
            kn.append(kk[:dn])
            vh.append(kk[dn:])
        qs.append(qh)
        knope.append(kn)
        vs.append(vh)
        krope.append(n_rotate(kr, t, cfg.rope_theta, cfg.rope_interleave))
    out = []
    for t in range(T):
        heads = []
        for h in range(H):
            qn, qr = qs[t][h]
            sc = [(float((qn * knope[s][h]).sum()) + float((qr * krope[s]).sum())) * scale for s in range(t + 1)]
            m = max(sc)
            ex = [math.exp(a - m) for a in sc]
            z = sum(ex)
            o = torch.zeros(dv, dtype=xs[0].dtype)
            for s in range(t + 1):
                o = o + (ex[s] / z) * vs[s][h]
            heads.append(o)
        hsum = xs[t] + P[pre + "self_attn.o_proj.weight"].mv(torch.cat(heads))
        y = n_rms(hsum, P[pre + "post_attention_layernorm.weight"], cfg.rms_norm_eps)
        if cfg.is_moe(layer):
            chosen, ws = n_router(P, pre, cfg, y)
            f = n_mlp(P, pre + "mlp.shared_experts.", y)
            for e, w in zip(chosen, ws):
                f = f + w * n_mlp(P, pre + f"mlp.experts.{e}.", y)
        else:
            f = n_mlp(P, pre + "mlp.", y)
        out.append(hsum + f)
    return out


def n_forward(P, cfg, ids):
    """Returns (logits list [T] of [V], mtp logits list [T-1] of [V] or None)."""
    E = P["model.embed_tokens.weight"]
    xs = [E[t].clone() for t in ids]
    for layer in range(cfg.num_hidden_layers):
        xs = n_layer(P, cfg, layer, xs)
    logits = [P["lm_head.weight"].mv(n_rms(x, P["model.norm.weight"], cfg.rms_norm_eps)) for x in xs]
    mtp = None
    if cfg.has_mtp and len(ids) >= 2:
        L = cfg.num_hidden_layers
        pre = f"model.layers.{L}."
        hs = []
        for i in range(len(ids) - 1):
            e = n_rms(E[ids[i + 1]], P[pre + "enorm.weight"], cfg.rms_norm_eps)
            h = n_rms(xs[i], P[pre + "hnorm.weight"], cfg.rms_norm_eps)
            hs.append(P[pre + "eh_proj.weight"].mv(torch.cat([e, h])))
        hs = n_layer(P, cfg, L, hs)
        mtp = [P["lm_head.weight"].mv(n_rms(x, P[pre + "shared_head.norm.weight"], cfg.rms_norm_eps)) for x in hs]
    return logits, mtp


def n_ce(logit, target):
    m = float(logit.max())
    return m + math.log(sum(math.exp(float(a) - m) for a in logit)) - float(logit[target])


# ----------------------------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------------------------
def run_tool(*args, expect=0):
    p = subprocess.run([sys.executable, TOOL] + [str(a) for a in args], capture_output=True, text=True)
    if p.returncode != expect:
        print(p.stdout, p.stderr)
    return p


def test_safetensors(tmp):
    g = torch.Generator().manual_seed(0)
    src = {"a": torch.randn(3, 4, generator=g), "b.c": torch.randn(7, generator=g), "z": torch.randn(2, 1, 2)}
    for dt in [torch.float32, torch.bfloat16, torch.float16]:
        path = os.path.join(tmp, f"rt_{dt}.safetensors")
        ts = {k: v.to(dt) for k, v in src.items()}
        R.st_write(path, ts, {"format": "pt"})
        back, meta = R.st_read(path)
        ok = meta == {"format": "pt"} and set(back) == set(ts) and all(
            back[k].dtype == dt and torch.equal(back[k].view(R.INT_VIEW[back[k].element_size()]),
                                                ts[k].view(R.INT_VIEW[ts[k].element_size()])) for k in ts)
        check(ok, f"safetensors round trip {dt}")
    # BF16 is the upper half of float32; check the encoding against a hand-built value
    path = os.path.join(tmp, "bf.safetensors")
    R.st_write(path, {"x": torch.tensor([1.0, -2.0, 0.15625], dtype=torch.bfloat16)})
    with open(path, "rb") as f:
        raw = f.read()
    import struct
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    payload = raw[8 + n:]
    exp = b"".join(struct.pack("<I", struct.unpack("<I", struct.pack("<f", v))[0])[2:] for v in [1.0, -2.0, 0.15625])
    check(hdr["x"]["dtype"] == "BF16" and payload == exp and (8 + n) % 8 == 0, "BF16 bytes = upper 16 bits of f32")


def make_params(cfg, seed, dtype=torch.float64):
    P = R.init_params(cfg, seed, bias_std=0.1, std=0.35)
    g = torch.Generator().manual_seed(seed + 7)
    for n in P:  # non-trivial norm weights
        if P[n].dim() == 1 and not n.endswith("bias"):
            P[n] = 1.0 + 0.2 * torch.randn(P[n].shape, generator=g)
    return {n: t.to(dtype) for n, t in P.items()}


def test_sharded_and_strict(tmp):
    cfg = R.Config(tiny_config())
    P = make_params(cfg, 3)
    d1 = os.path.join(tmp, "single")
    d3 = os.path.join(tmp, "sharded")
    n1 = R.write_checkpoint(d1, cfg, P, torch.float32, 1)
    n3 = R.write_checkpoint(d3, cfg, P, torch.float32, 3)
    c1, P1 = R.load_model(d1)
    c3, P3 = R.load_model(d3)
    with open(os.path.join(d3, R.INDEX_NAME)) as f:
        idx = json.load(f)
    shards = sorted(set(idx["weight_map"].values()))
    check(n1 == n3 == len(R.expected_tensors(cfg)) and len(shards) == 3
          and all(torch.equal(P1[k], P3[k]) for k in P1) and set(P1) == set(P),
          f"sharded (3) and single checkpoints load identically ({n1} tensors)")
    check(all(torch.equal(P1[k], P[k].float().double()) for k in P), "f32 checkpoint round trip of parameters")

    def expect_refuse(d, what, needle):
        try:
            R.load_model(d)
            check(False, f"strict loader rejects {what}")
        except R.Refuse as e:
            check(needle in str(e), f"strict loader rejects {what}")

    def copy(name):
        d = os.path.join(tmp, name)
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(d3, d)
        return d

    victim = "model.layers.1.mlp.experts.3.up_proj.weight"
    # missing tensor: drop it from its shard and from the index
    d = copy("missing")
    fn = idx["weight_map"][victim]
    ts, meta = R.st_read(os.path.join(d, fn))
    del ts[victim]
    R.st_write(os.path.join(d, fn), ts, meta)
    wm = dict(idx["weight_map"])
    del wm[victim]
    with open(os.path.join(d, R.INDEX_NAME), "w") as f:
        json.dump({"weight_map": wm}, f)
    expect_refuse(d, "a missing tensor", "missing: " + victim)
    # listed in the index but absent from the shard
    d = copy("absent")
    R.st_write(os.path.join(d, fn), ts, meta)
    expect_refuse(d, "an index entry absent from its shard", "absent from that shard")
    # extra tensor
    d = copy("extra")
    ts, meta = R.st_read(os.path.join(d, fn))
    ts["model.layers.0.mlp.experts.0.gate_proj.weight"] = torch.zeros(3)
    R.st_write(os.path.join(d, fn), ts, meta)
    wm = dict(idx["weight_map"])
    wm["model.layers.0.mlp.experts.0.gate_proj.weight"] = fn
    with open(os.path.join(d, R.INDEX_NAME), "w") as f:
        json.dump({"weight_map": wm}, f)
    expect_refuse(d, "an extra tensor", "unexpected: model.layers.0.mlp.experts.0.gate_proj.weight")
    # tensor present in two shards
    d = copy("dup")
    other = [s for s in shards if s != fn][0]
    ts, meta = R.st_read(os.path.join(d, other))
    ts[victim] = P[victim].float()
    R.st_write(os.path.join(d, other), ts, meta)
    expect_refuse(d, "a tensor present in two shards", "present in two shards")
    # single-file extra / missing
    d = os.path.join(tmp, "single_extra")
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(d1, d)
    ts, meta = R.st_read(os.path.join(d, R.SINGLE_NAME))
    ts["lm_head.bias"] = torch.zeros(cfg.vocab_size)
    R.st_write(os.path.join(d, R.SINGLE_NAME), ts, meta)
    expect_refuse(d, "an extra tensor (single file)", "unexpected: lm_head.bias")
    # MTP copy that differs
    d = os.path.join(tmp, "mtp_copy")
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(d1, d)
    ts, meta = R.st_read(os.path.join(d, R.SINGLE_NAME))
    ts[f"model.layers.{cfg.num_hidden_layers}.shared_head.head.weight"][0, 0] += 1
    R.st_write(os.path.join(d, R.SINGLE_NAME), ts, meta)
    expect_refuse(d, "an MTP head copy differing from lm_head", "differs from lm_head.weight")
    # CLI: exit 2 on a bad checkpoint, names never fails
    p = run_tool("eval", "--model", os.path.join(tmp, "missing"), "--data", TOOL, "--ctx", 8, expect=2)
    check(p.returncode == 2 and "missing" in p.stderr, "CLI exits 2 listing missing names")
    p = run_tool("names", "--model", os.path.join(tmp, "extra"))
    r = json.loads(p.stdout)
    check(p.returncode == 0 and r["unexpected"] == ["model.layers.0.mlp.experts.0.gate_proj.weight"]
          and r["missing"] == [], "names reports unexpected without failing")
    # config refusals
    for bad, what in [({"rope_scaling": {"type": "yarn", "factor": 4}}, "rope_scaling"),
                      ({"attention_bias": True}, "attention_bias"), ({"hidden_act": "gelu"}, "hidden_act"),
                      ({"tie_word_embeddings": True}, "tie_word_embeddings")]:
        cp = os.path.join(tmp, "bad.json")
        with open(cp, "w") as f:
            json.dump(tiny_config(**bad), f)
        p = run_tool("write", "--config", cp, "--out", os.path.join(tmp, "bad"), "--seed", 1, expect=2)
        check(p.returncode == 2 and what in p.stderr, f"refuses config with {what}")


def test_rope():
    cfg = R.Config(tiny_config(qk_rope_head_dim=8, rope_theta=10000.0))
    T, d = 12, 8
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 1, T, d, generator=g, dtype=torch.float64)
    k = torch.randn(1, 1, T, d, generator=g, dtype=torch.float64)
    cos, sin = R.rope_cos_sin(cfg, T, torch.float64)
    for inter in [True, False]:
        fn = R.apply_rotary_pos_emb_interleave if inter else R.apply_rotary_pos_emb
        qe, ke = fn(q, k, cos, sin)
        s_vec = qe[0, 0] @ ke[0, 0].T
        qn = torch.stack([n_rotate(q[0, 0, t], t, 10000.0, inter) for t in range(T)])
        kn = torch.stack([n_rotate(k[0, 0, t], t, 10000.0, inter) for t in range(T)])
        s_naive = qn @ kn.T
        err = (s_vec - s_naive).abs().max().item()
        check(err < 1e-12, f"rope_interleave={inter}: scores equal naive "
                           f"{'adjacent' if inter else 'half-split'}-pair rotation (max err {err:.1e})")
    # and the two layouts really differ (so the test above is not vacuous)
    qa, ka = R.apply_rotary_pos_emb_interleave(q, k, cos, sin)
    qb, kb = R.apply_rotary_pos_emb(q, k, cos, sin)
    check((qa[0, 0] @ ka[0, 0].T - qb[0, 0] @ kb[0, 0].T).abs().max().item() > 1e-3,
          "interleaved and non-interleaved RoPE give different scores")


def test_router():
    cfg = R.Config(tiny_config(n_routed_experts=16, n_group=4, topk_group=2, num_experts_per_tok=4))
    g = torch.Generator().manual_seed(11)
    P = {"x.mlp.gate.weight": torch.randn(16, 16, generator=g, dtype=torch.float64),
         "x.mlp.gate.e_score_correction_bias": 0.3 * torch.rand(16, generator=g, dtype=torch.float64)}
    X = torch.randn(50, 16, generator=g, dtype=torch.float64)
    idx, w = R.router(P, "x.", cfg, X)
    ok = True
    for t in range(50):
        ch, ws = n_router(P, "x.", cfg, X[t])
        order = sorted(range(4), key=lambda j: int(idx[t, j]))
        ok &= [int(idx[t, j]) for j in order] == sorted(ch)
        ref = dict(zip(ch, ws))
        ok &= all(abs(float(w[t, j]) - ref[int(idx[t, j])]) < 1e-14 for j in range(4))
    check(ok, "router (group-limited, biased selection, normalised unbiased weights) equals naive")
    # bias really changes selection
    P0 = dict(P)
    P0["x.mlp.gate.e_score_correction_bias"] = torch.zeros(16, dtype=torch.float64)
    idx0, _ = R.router(P0, "x.", cfg, X)
    check(not torch.equal(idx0.sort(-1)[0], idx.sort(-1)[0]), "e_score_correction_bias changes expert choice")


def test_forward_vs_naive():
    cases = [("q_lora_rank=6, interleave, MTP", tiny_config(q_lora_rank=6)),
             ("q_lora_rank=null, interleave, MTP", tiny_config(q_lora_rank=None)),
             ("q_lora_rank=null, no interleave, no MTP", tiny_config(q_lora_rank=None, rope_interleave=False,
                                                                      mtp=0)),
             ("first_k_dense_replace=3 (MTP layer MoE)", tiny_config(first_k_dense_replace=3,
                                                                      num_hidden_layers=3)),
             ("all dense incl. MTP layer", tiny_config(first_k_dense_replace=5)),
             ("norm_topk_prob=false", tiny_config(norm_topk_prob=False, first_k_dense_replace=0))]
    ids = [72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 258, 0, 255]
    for name, raw in cases:
        cfg = R.Config(raw)
        P = make_params(cfg, 21)
        with torch.no_grad():
            logits, h = R.model_forward(P, cfg, torch.tensor([ids]))
            mtp = R.mtp_forward(P, cfg, torch.tensor([ids]), h) if cfg.has_mtp else None
        nl, nm = n_forward(P, cfg, ids)
        err = (logits[0] - torch.stack(nl)).abs().max().item()
        mag = logits.abs().max().item()
        msg = f"vectorised == naive loop [{name}]: logits max err {err:.1e} (|logits| up to {mag:.1f})"
        if cfg.has_mtp:
            merr = (mtp[0] - torch.stack(nm)).abs().max().item()
            msg += f", MTP max err {merr:.1e}"
            err = max(err, merr)
        check(err < 1e-10, msg)


def test_cli_end_to_end(tmp):
    cfgp = os.path.join(tmp, "cfg.json")
    raw = tiny_config(q_lora_rank=6, max_position_embeddings=64)
    with open(cfgp, "w") as f:
        json.dump(raw, f)
    data = os.path.join(tmp, "data.txt")
    text = ("the quick brown fox jumps over the lazy dog. " * 3 + "pack my box with five dozen liquor jugs! ") * 3
    with open(data, "wb") as f:
        f.write(text.encode())
    out = os.path.join(tmp, "ck")
    p = run_tool("write", "--config", cfgp, "--out", out, "--seed", 4, "--dtype", "bf16", "--shards", 2,
                 "--train-steps", 20, "--data", data, "--seq", 24)
    r = json.loads(p.stdout)
    check(p.returncode == 0 and r["tensors"] == len(R.expected_tensors(R.Config(raw))), "write bf16, 2 shards")
    with open(os.path.join(out, "config.json")) as f:
        check(json.load(f)["torch_dtype"] == "bfloat16", "config.json has torch_dtype bfloat16")
    ts, _ = R.read_weight_files(out)
    check(all(t.dtype == torch.bfloat16 for t in ts.values()), "all stored tensors are BF16")
    bias = ts["model.layers.1.mlp.gate.e_score_correction_bias"].float()
    check(bias.abs().max().item() > 0, "e_score_correction_bias is non-zero")

    cfg, P = R.load_model(out)
    buf = open(data, "rb").read()
    # eval, window protocol, against the naive forward
    loss64 = {}
    for T in [16, 13]:
        p = run_tool("eval", "--model", out, "--data", data, "--ctx", T)
        r = json.loads(p.stdout)
        n = len(buf) - 1
        tot, mtot, mcnt = 0.0, 0.0, 0
        s = 0
        while s < n:
            ln = min(T, n - s)
            x = list(buf[s:s + ln])
            nl, nm = n_forward(P, cfg, x)
            tot += sum(n_ce(nl[i], buf[s + i + 1]) for i in range(ln))
            if nm:
                mtot += sum(n_ce(nm[i], buf[s + i + 2]) for i in range(ln - 1))
                mcnt += ln - 1
            s += ln
        ok = (r["tokens"] == n and r["mtp_tokens"] == mcnt and abs(r["loss"] - tot / n) < 1e-10
              and abs(r["mtp_loss"] - mtot / mcnt) < 1e-10)
        loss64[T] = r["loss"]
        check(ok, f"eval --ctx {T} (n={n}, n%T={n % T}) equals naive window protocol: loss {r['loss']:.6f} "
                  f"mtp_loss {r['mtp_loss']:.6f}")
    p = run_tool("eval", "--model", out, "--data", data, "--ctx", 16, "--float32")
    r32 = json.loads(p.stdout)
    d32 = r32["loss"] - loss64[16]
    check(abs(d32) < 1e-5, f"--float32 eval close to float64 (diff {d32:.1e})")
    # greedy generation == repeated naive argmax
    prompt = "the quick"
    p = run_tool("generate", "--model", out, "--prompt", prompt, "-n", 12)
    gen = json.loads(p.stdout)["text_bytes"]
    ids = list(prompt.encode())
    ref = []
    for _ in range(12):
        nl, _ = n_forward(P, cfg, ids)
        t = max(range(cfg.vocab_size), key=lambda v: (float(nl[-1][v]), -v))
        ref.append(t)
        ids.append(t)
    check(gen == ref, f"greedy generate equals repeated naive argmax: {bytes(b for b in gen if b < 256)!r}")
    p = run_tool("generate", "--model", out, "--prompt", "x" * 60, "-n", 5, expect=2)
    check(p.returncode == 2, "generate refuses prompt+n > max_position_embeddings")
    p = run_tool("logits", "--model", out, "--text", "the quick", "--mtp")
    r = json.loads(p.stdout)
    nl, nm = n_forward(P, cfg, list(b"the quick"))
    check(max(abs(a - float(b)) for a, b in zip(r["logits"][0], nl[-1])) < 1e-10
          and max(abs(a - float(b)) for a, b in zip(r["mtp_logits"][0], nm[-1])) < 1e-10,
          "logits subcommand equals naive")


def main():
    t0 = time.time()
    torch.set_num_threads(2)
    tmp = tempfile.mkdtemp(prefix="hf_dsv3_selftest_")
    try:
        test_safetensors(tmp)
        test_rope()
        test_router()
        test_forward_vs_naive()
        test_sharded_and_strict(tmp)
        test_cli_end_to_end(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(FAILS)} failure(s), {time.time() - t0:.1f} s")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
