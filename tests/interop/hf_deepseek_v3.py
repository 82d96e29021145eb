#!/usr/bin/env python3
"""Independent PyTorch reference of Hugging Face transformers' DeepSeek-V3 (eager path, no rope_scaling)
plus DeepSeek-V3's multi-token-prediction (MTP) module, for interop tests of the `moe` trainer.

Written from the PUBLIC sources below (own code; nothing copied from /work/main/lib):
  * huggingface/transformers  src/transformers/models/deepseek_v3/modeling_deepseek_v3.py
      rms_norm            <- DeepseekV3RMSNorm
      rope_cos_sin        <- DeepseekV3RotaryEmbedding (+ modeling_rope_utils default init), no rope_scaling
      rotate_half, apply_rotary_pos_emb, apply_rotary_pos_emb_interleave <- same-named functions
      attention           <- DeepseekV3Attention.forward + eager_attention_forward
      mlp                 <- DeepseekV3MLP
      router, get_topk_indices <- DeepseekV3TopkRouter (noaux_tc, n_group/topk_group, e_score_correction_bias)
      moe                 <- DeepseekV3MoE (routed experts + shared experts)
      decoder_layer       <- DeepseekV3DecoderLayer
      model_forward       <- DeepseekV3Model + DeepseekV3ForCausalLM (lm_head)
      init_params         <- DeepseekV3PreTrainedModel._init_weights
  * huggingface/transformers  src/transformers/models/deepseek_v3/configuration_deepseek_v3.py (defaults, field names)
  * vllm-project/vllm  vllm/model_executor/models/deepseek_mtp.py
      mtp_forward         <- DeepSeekMultiTokenPredictorLayer / SharedHead (enorm, hnorm, eh_proj, mtp_block, shared_head)

Deliberate precision choice: HF up-casts to float32 inside RMSNorm, softmax and the router.  Here those steps run in
max(float32, compute dtype), i.e. float64 when computing in float64 (HF would *down*-cast a float64 model there).

Tokens are bytes (id = byte value).  Run with --help for the command line.
"""
import os
import sys


def _ensure_torch():
    try:
        import torch  # noqa: F401
        return
    except ImportError:
        pass
    # Debian's python3-torch lives in /usr/bin/python3's dist-packages; re-exec under it if we were started by
    # another interpreter (e.g. a pyenv shim).
    sysp = "/usr/bin/python3"
    if os.path.exists(sysp) and os.path.realpath(sys.executable) != os.path.realpath(sysp) \
            and not os.environ.get("HF_DSV3_REEXEC"):
        os.environ["HF_DSV3_REEXEC"] = "1"
        os.execv(sysp, [sysp] + sys.argv)
    sys.stderr.write("error: cannot import torch (apt-get install python3-torch python3-numpy)\n")
    sys.exit(2)


_ensure_torch()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import struct  # noqa: E402
from collections import OrderedDict  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HF_DEFAULT_NORM_EPS = 1e-6  # DeepseekV3RMSNorm(hidden_size, eps=1e-6): used by q_a_layernorm / kv_a_layernorm


class Refuse(Exception):
    """Any user-facing error: printed to stderr, exit status 2."""


# ----------------------------------------------------------------------------------------------------------------
# safetensors
# ----------------------------------------------------------------------------------------------------------------
ST_DTYPES = {
    "F32": (torch.float32, 4),
    "BF16": (torch.bfloat16, 2),
    "F16": (torch.float16, 2),
    "F64": (torch.float64, 8),
}
TORCH_TO_ST = {v[0]: k for k, v in ST_DTYPES.items()}
INT_VIEW = {2: torch.int16, 4: torch.int32, 8: torch.int64}

if sys.byteorder != "little":
    raise SystemExit("this tool assumes a little-endian host")


def st_read(path):
    """Returns (OrderedDict name -> tensor in its stored dtype, metadata dict or None)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise Refuse(f"{path}: too short for a safetensors file")
    (hlen,) = struct.unpack("<Q", data[:8])
    if 8 + hlen > len(data):
        raise Refuse(f"{path}: header length {hlen} exceeds file size")
    try:
        header = json.loads(data[8:8 + hlen].decode("utf-8"))
    except Exception as e:  # noqa: BLE001
        raise Refuse(f"{path}: bad JSON header: {e}")
    base = 8 + hlen
    nbytes = len(data) - base
    meta = header.pop("__metadata__", None)
    out = OrderedDict()
    spans = []
    for name, info in header.items():
        dt = info.get("dtype")
        if dt not in ST_DTYPES:
            raise Refuse(f"{path}: tensor {name}: unsupported dtype {dt}")
        tdt, size = ST_DTYPES[dt]
        shape = [int(s) for s in info["shape"]]
        b, e = (int(v) for v in info["data_offsets"])
        numel = 1
        for s in shape:
            numel *= s
        if e - b != numel * size or b < 0 or e > nbytes:
            raise Refuse(f"{path}: tensor {name}: bad data_offsets {b},{e} for {dt}{shape}")
        spans.append((b, e, name))
        if numel == 0:
            out[name] = torch.zeros(shape, dtype=tdt)
        else:
            out[name] = torch.frombuffer(bytearray(data[base + b:base + e]), dtype=tdt).reshape(shape).clone()
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise Refuse(f"{path}: tensors {n0} and {n1} overlap")
    return out, meta


def st_write(path, tensors, metadata=None):
    """tensors: mapping name -> tensor (written in its own dtype, which must be F32/BF16/F16/F64)."""
    header = OrderedDict()
    if metadata is not None:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    off = 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        if t.dtype not in TORCH_TO_ST:
            raise Refuse(f"cannot write dtype {t.dtype} ({name})")
        st = TORCH_TO_ST[t.dtype]
        size = ST_DTYPES[st][1]
        raw = t.reshape(-1).view(INT_VIEW[size]).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": st, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        blobs.append(raw)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for raw in blobs:
            f.write(raw)
    return off


# ----------------------------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------------------------
class Config:
    REQUIRED = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "moe_intermediate_size", "n_routed_experts", "num_experts_per_tok", "kv_lora_rank",
                "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"]
    # defaults from configuration_deepseek_v3.py where a field is absent
    DEFAULTS = {"first_k_dense_replace": 3, "n_shared_experts": 1, "n_group": 8, "topk_group": 4,
                "routed_scaling_factor": 2.5, "norm_topk_prob": True, "scoring_func": "sigmoid",
                "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 4096,
                "q_lora_rank": 1536, "rope_interleave": True, "num_nextn_predict_layers": 0,
                "initializer_range": 0.02, "hidden_act": "silu", "attention_bias": False,
                "tie_word_embeddings": False, "rope_scaling": None, "model_type": "deepseek_v3",
                "num_key_value_heads": None}

    def __init__(self, raw):
        if not isinstance(raw, dict):
            raise Refuse("config.json must be a JSON object")
        self.raw = raw
        miss = [k for k in self.REQUIRED if k not in raw]
        if miss:
            raise Refuse(f"config is missing required fields: {miss}")
        g = lambda k: raw.get(k, self.DEFAULTS.get(k))  # noqa: E731
        for k in self.REQUIRED:
            setattr(self, k, raw[k])
        for k in self.DEFAULTS:
            setattr(self, k, g(k))
        rp = raw.get("rope_parameters")
        if "rope_theta" not in raw and isinstance(rp, dict) and "rope_theta" in rp:
            self.rope_theta = rp["rope_theta"]
        # refusals
        if self.model_type != "deepseek_v3":
            raise Refuse(f"model_type must be deepseek_v3, got {self.model_type!r}")
        if self.rope_scaling is not None:
            raise Refuse("rope_scaling must be null (no YaRN/other scaling supported)")
        if isinstance(rp, dict) and rp.get("rope_type", rp.get("type", "default")) != "default":
            raise Refuse("rope_parameters with a non-default rope_type is not supported")
        if self.attention_bias:
            raise Refuse("attention_bias=true is not supported")
        if self.hidden_act != "silu":
            raise Refuse(f"hidden_act must be silu, got {self.hidden_act!r}")
        if self.tie_word_embeddings:
            raise Refuse("tie_word_embeddings=true is not supported")
        if self.scoring_func != "sigmoid":
            raise Refuse(f"scoring_func must be sigmoid, got {self.scoring_func!r}")
        if raw.get("topk_method", "noaux_tc") != "noaux_tc":
            raise Refuse("topk_method must be noaux_tc (the only one HF implements)")
        if self.num_nextn_predict_layers not in (0, 1):
            raise Refuse("num_nextn_predict_layers must be 0 or 1")
        if self.vocab_size < 256:
            raise Refuse("vocab_size must be >= 256 (byte tokens)")
        if self.q_lora_rank is not None and (not isinstance(self.q_lora_rank, int) or self.q_lora_rank <= 0):
            raise Refuse("q_lora_rank must be null or a positive int")
        if self.qk_rope_head_dim % 2:
            raise Refuse("qk_rope_head_dim must be even")
        E, G = self.n_routed_experts, self.n_group
        if E % G or E // G < 2:
            raise Refuse("n_routed_experts must be a multiple of n_group with >= 2 experts per group "
                         "(HF takes the top-2 per group)")
        if not 1 <= self.topk_group <= G:
            raise Refuse("topk_group must be in [1, n_group]")
        if not 1 <= self.num_experts_per_tok <= self.topk_group * (E // G):
            raise Refuse("num_experts_per_tok must be in [1, topk_group * experts_per_group]")
        self.qk_head_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
        self.rms_norm_eps = float(self.rms_norm_eps)
        self.rope_theta = float(self.rope_theta)
        self.has_mtp = self.num_nextn_predict_layers == 1

    def is_moe(self, layer):
        return layer >= self.first_k_dense_replace


def read_config(path):
    try:
        with open(path) as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise Refuse(f"no such config file: {path}")
    except json.JSONDecodeError as e:
        raise Refuse(f"{path}: bad JSON: {e}")
    return Config(raw)


# ----------------------------------------------------------------------------------------------------------------
# tensor names
# ----------------------------------------------------------------------------------------------------------------
def layer_tensors(cfg, layer):
    """Names/shapes of one DeepseekV3DecoderLayer (without the model.layers.N. prefix)."""
    D, H = cfg.hidden_size, cfg.num_attention_heads
    dn, dr, dv, rkv = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
    t = OrderedDict()
    t["input_layernorm.weight"] = [D]
    t["post_attention_layernorm.weight"] = [D]
    if cfg.q_lora_rank is None:
        t["self_attn.q_proj.weight"] = [H * (dn + dr), D]
    else:
        t["self_attn.q_a_proj.weight"] = [cfg.q_lora_rank, D]
        t["self_attn.q_a_layernorm.weight"] = [cfg.q_lora_rank]
        t["self_attn.q_b_proj.weight"] = [H * (dn + dr), cfg.q_lora_rank]
    t["self_attn.kv_a_proj_with_mqa.weight"] = [rkv + dr, D]
    t["self_attn.kv_a_layernorm.weight"] = [rkv]
    t["self_attn.kv_b_proj.weight"] = [H * (dn + dv), rkv]
    t["self_attn.o_proj.weight"] = [D, H * dv]
    if cfg.is_moe(layer):
        E, I = cfg.n_routed_experts, cfg.moe_intermediate_size
        t["mlp.gate.weight"] = [E, D]
        t["mlp.gate.e_score_correction_bias"] = [E]
        for j in range(E):
            t[f"mlp.experts.{j}.gate_proj.weight"] = [I, D]
            t[f"mlp.experts.{j}.up_proj.weight"] = [I, D]
            t[f"mlp.experts.{j}.down_proj.weight"] = [D, I]
        Is = I * cfg.n_shared_experts
        t["mlp.shared_experts.gate_proj.weight"] = [Is, D]
        t["mlp.shared_experts.up_proj.weight"] = [Is, D]
        t["mlp.shared_experts.down_proj.weight"] = [D, Is]
    else:
        I = cfg.intermediate_size
        t["mlp.gate_proj.weight"] = [I, D]
        t["mlp.up_proj.weight"] = [I, D]
        t["mlp.down_proj.weight"] = [D, I]
    return t


def expected_tensors(cfg):
    D, V = cfg.hidden_size, cfg.vocab_size
    t = OrderedDict()
    t["model.embed_tokens.weight"] = [V, D]
    n_layers = cfg.num_hidden_layers + (1 if cfg.has_mtp else 0)
    for layer in range(n_layers):
        p = f"model.layers.{layer}."
        for k, s in layer_tensors(cfg, layer).items():
            t[p + k] = s
        if layer == cfg.num_hidden_layers:  # MTP extras
            t[p + "enorm.weight"] = [D]
            t[p + "hnorm.weight"] = [D]
            t[p + "eh_proj.weight"] = [D, 2 * D]
            t[p + "shared_head.norm.weight"] = [D]
            t[p + "embed_tokens.weight"] = [V, D]
            t[p + "shared_head.head.weight"] = [V, D]
    t["model.norm.weight"] = [D]
    t["lm_head.weight"] = [V, D]
    return t


def mtp_copy_names(cfg):
    p = f"model.layers.{cfg.num_hidden_layers}."
    return {p + "embed_tokens.weight": "model.embed_tokens.weight",
            p + "shared_head.head.weight": "lm_head.weight"}


# ----------------------------------------------------------------------------------------------------------------
# checkpoint directory I/O
# ----------------------------------------------------------------------------------------------------------------
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def read_weight_files(d):
    """Returns (tensors, problems).  problems: list of strings about shard/index inconsistencies."""
    problems = []
    tensors = OrderedDict()
    ip = os.path.join(d, INDEX_NAME)
    sp = os.path.join(d, SINGLE_NAME)
    if os.path.exists(ip):
        with open(ip) as f:
            try:
                index = json.load(f)
            except json.JSONDecodeError as e:
                raise Refuse(f"{ip}: bad JSON: {e}")
        wm = index.get("weight_map")
        if not isinstance(wm, dict):
            raise Refuse(f"{ip}: no weight_map object")
        files = sorted(set(wm.values()))
        where = {}
        for fn in files:
            if os.path.basename(fn) != fn:
                raise Refuse(f"{ip}: shard name {fn!r} must be a plain file name")
            fp = os.path.join(d, fn)
            if not os.path.exists(fp):
                raise Refuse(f"shard {fn} named in the index does not exist")
            part, _ = st_read(fp)
            for name, t in part.items():
                if name in where:
                    problems.append(f"tensor {name} present in two shards: {where[name]} and {fn}")
                    continue
                where[name] = fn
                if name not in wm:
                    problems.append(f"tensor {name} in shard {fn} is not listed in the index")
                elif wm[name] != fn:
                    problems.append(f"tensor {name} is in shard {fn} but the index maps it to {wm[name]}")
                tensors[name] = t
        for name, fn in wm.items():
            if name not in where:
                problems.append(f"tensor {name} listed in the index for {fn} is absent from that shard")
    elif os.path.exists(sp):
        tensors, _ = st_read(sp)
    else:
        raise Refuse(f"{d}: neither {SINGLE_NAME} nor {INDEX_NAME} found")
    return tensors, problems


def check_names(cfg, tensors):
    exp = expected_tensors(cfg)
    missing = [n for n in exp if n not in tensors]
    unexpected = [n for n in tensors if n not in exp]
    matched = len(exp) - len(missing)
    return matched, missing, unexpected


def load_model(d, dtype=torch.float64):
    """Strict load.  Returns (cfg, params dict name -> tensor in `dtype`, without the MTP copies)."""
    cfg = read_config(os.path.join(d, "config.json"))
    tensors, problems = read_weight_files(d)
    matched, missing, unexpected = check_names(cfg, tensors)
    # The MTP copies of the embedding and head may be stored once (tied): nothing is missing then.
    copies = mtp_copy_names(cfg) if cfg.has_mtp else {}
    missing = [n for n in missing if n not in copies]
    exp = expected_tensors(cfg)
    bad_shape = [f"{n}: file {list(t.shape)} expected {exp[n]}" for n, t in tensors.items()
                 if n in exp and list(t.shape) != exp[n]]
    if problems or missing or unexpected or bad_shape:
        msg = [f"checkpoint {d} does not match the model ({matched}/{len(exp)} tensors matched)"]
        msg += [f"  index/shard problem: {p}" for p in problems]
        msg += [f"  missing: {n}" for n in missing]
        msg += [f"  unexpected: {n}" for n in unexpected]
        msg += [f"  wrong shape: {s}" for s in bad_shape]
        raise Refuse("\n".join(msg))
    P = {}
    for n, t in tensors.items():
        P[n] = t.to(dtype)
    if cfg.has_mtp:
        for copy, orig in mtp_copy_names(cfg).items():
            if copy not in tensors:
                continue
            if not torch.equal(tensors[copy].float(), tensors[orig].float()):
                raise Refuse(f"MTP copy {copy} differs from {orig}")
            del P[copy]
    return cfg, P


def write_checkpoint(out, cfg, P, dtype, shards=1, tied=False):
    """P: params without the MTP copies (they are added here, unless tied: stored once, as safetensors'
    shared-tensor deduplication leaves them).  dtype: torch dtype to store."""
    os.makedirs(out, exist_ok=True)
    full = OrderedDict()
    for n in expected_tensors(cfg):
        if cfg.has_mtp and n in mtp_copy_names(cfg):
            if tied:
                continue
            full[n] = P[mtp_copy_names(cfg)[n]]
        else:
            full[n] = P[n]
    full = OrderedDict((n, t.detach().to(dtype).contiguous()) for n, t in full.items())
    raw = dict(cfg.raw)
    raw["torch_dtype"] = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(raw, f, indent=2)
        f.write("\n")
    for stale in [SINGLE_NAME, INDEX_NAME]:
        if os.path.exists(os.path.join(out, stale)):
            os.remove(os.path.join(out, stale))
    names = list(full)
    if shards <= 1:
        st_write(os.path.join(out, SINGLE_NAME), full, {"format": "pt"})
    else:
        total = sum(t.numel() * t.element_size() for t in full.values())
        groups, cur, acc = [], [], 0
        for n in names:  # consecutive groups of ~equal byte size
            cur.append(n)
            acc += full[n].numel() * full[n].element_size()
            if acc >= total * (len(groups) + 1) / shards and len(groups) < shards - 1:
                groups.append(cur)
                cur = []
        groups.append(cur)
        groups = [gr for gr in groups if gr]
        while len(groups) < shards:  # never write empty shards: split the group with most tensors
            big = max(range(len(groups)), key=lambda i: len(groups[i]))
            if len(groups[big]) < 2:
                raise Refuse(f"cannot split {len(names)} tensors into {shards} shards")
            g = groups.pop(big)
            groups[big:big] = [g[:len(g) // 2], g[len(g) // 2:]]
        K = len(groups)
        wm = OrderedDict()
        for i, g in enumerate(groups):
            fn = f"model-{i + 1:05d}-of-{K:05d}.safetensors"
            st_write(os.path.join(out, fn), {n: full[n] for n in g}, {"format": "pt"})
            for n in g:
                wm[n] = fn
        with open(os.path.join(out, INDEX_NAME), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2)
            f.write("\n")
    return len(full)


# ----------------------------------------------------------------------------------------------------------------
# the model (vectorised)
# ----------------------------------------------------------------------------------------------------------------
def _hp(dt):
    """HF's 'float32' up-cast, but never a down-cast."""
    return torch.float64 if dt == torch.float64 else torch.float32


class Options:
    def __init__(self, latent_eps="hf", mtp_mask_pos0=False):
        self.latent_eps = latent_eps  # "hf": q_a_layernorm/kv_a_layernorm use 1e-6; "config": rms_norm_eps
        self.mtp_mask_pos0 = mtp_mask_pos0  # vLLM zeroes the MTP input embedding at position 0


DEFAULT_OPTS = Options()


def rms_norm(x, w, eps):
    # DeepseekV3RMSNorm.forward
    in_dt = x.dtype
    h = x.to(_hp(in_dt))
    var = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(var + eps)
    return w * h.to(in_dt)


def rope_cos_sin(cfg, T, dtype):
    # default rope init: inv_freq = 1 / theta^(arange(0, d, 2)/d), d = head_dim = qk_rope_head_dim; scaling 1.0
    d = cfg.qk_rope_head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).to(dtype) / d))
    pos = torch.arange(T, dtype=torch.int64).to(dtype)
    freqs = pos[:, None] * inv_freq[None, :]  # [T, d/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()  # [T, d]


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    # q [B,H,T,d], k [B,1,T,d], cos/sin [T,d] (broadcast over batch and heads)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def interleave_reorder(x):
    # HF apply_rotary_pos_emb_interleave: view(..., d/2, 2).transpose -> [x0, x2, x4, ..., x1, x3, ...]
    *lead, d = x.shape
    return x.reshape(*lead, d // 2, 2).transpose(-1, -2).reshape(*lead, d)


def apply_rotary_pos_emb_interleave(q, k, cos, sin):
    return apply_rotary_pos_emb(interleave_reorder(q), interleave_reorder(k), cos, sin)


def linear(x, w):
    return F.linear(x, w)


def attention(P, pre, cfg, x, cos, sin, opts):
    # DeepseekV3Attention.forward with eager_attention_forward; x [B,T,D]
    B, T, _ = x.shape
    H, dn, dr, dv = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    latent_eps = HF_DEFAULT_NORM_EPS if opts.latent_eps == "hf" else cfg.rms_norm_eps
    if cfg.q_lora_rank is None:
        q = linear(x, P[pre + "self_attn.q_proj.weight"])
    else:
        q = linear(x, P[pre + "self_attn.q_a_proj.weight"])
        q = rms_norm(q, P[pre + "self_attn.q_a_layernorm.weight"], latent_eps)
        q = linear(q, P[pre + "self_attn.q_b_proj.weight"])
    q = q.view(B, T, H, dn + dr).transpose(1, 2)  # [B,H,T,dn+dr]
    q_pass, q_rot = torch.split(q, [dn, dr], dim=-1)

    ckv = linear(x, P[pre + "self_attn.kv_a_proj_with_mqa.weight"])
    k_pass, k_rot = torch.split(ckv, [cfg.kv_lora_rank, dr], dim=-1)
    k_pass = rms_norm(k_pass, P[pre + "self_attn.kv_a_layernorm.weight"], latent_eps)
    k_pass = linear(k_pass, P[pre + "self_attn.kv_b_proj.weight"]).view(B, T, H, dn + dv).transpose(1, 2)
    k_pass, v = torch.split(k_pass, [dn, dv], dim=-1)
    k_rot = k_rot.reshape(B, 1, T, dr)

    if cfg.rope_interleave:
        q_rot, k_rot = apply_rotary_pos_emb_interleave(q_rot, k_rot, cos, sin)
    else:
        q_rot, k_rot = apply_rotary_pos_emb(q_rot, k_rot, cos, sin)
    k_rot = k_rot.expand(*k_pass.shape[:-1], -1)
    qs = torch.cat((q_pass, q_rot), dim=-1)
    ks = torch.cat((k_pass, k_rot), dim=-1)

    scaling = cfg.qk_head_dim ** (-0.5)
    w = torch.matmul(qs, ks.transpose(2, 3)) * scaling
    mask = torch.full((T, T), float("-inf"), dtype=w.dtype).triu(1)
    w = w + mask
    w = torch.softmax(w, dim=-1, dtype=_hp(qs.dtype)).to(qs.dtype)
    o = torch.matmul(w, v).transpose(1, 2).reshape(B, T, H * dv)
    return linear(o, P[pre + "self_attn.o_proj.weight"])


def mlp(P, pre, x):
    # DeepseekV3MLP: down(silu(gate(x)) * up(x))
    return linear(F.silu(linear(x, P[pre + "gate_proj.weight"])) * linear(x, P[pre + "up_proj.weight"]),
                  P[pre + "down_proj.weight"])


@torch.no_grad()
def get_topk_indices(scores, bias, cfg):
    # DeepseekV3TopkRouter.get_topk_indices
    E, G = cfg.n_routed_experts, cfg.n_group
    sfc = scores.view(-1, E) + bias.unsqueeze(0)
    group_scores = sfc.view(-1, G, E // G).topk(2, dim=-1)[0].sum(dim=-1)
    group_idx = torch.topk(group_scores, k=cfg.topk_group, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores)
    group_mask.scatter_(1, group_idx, 1)
    score_mask = group_mask.unsqueeze(-1).expand(-1, G, E // G).reshape(-1, E)
    sfc = sfc.masked_fill(~score_mask.bool(), 0.0)  # NB: HF fills with 0.0, not -inf
    return torch.topk(sfc, k=cfg.num_experts_per_tok, dim=-1, sorted=False)[1]


def router(P, pre, cfg, x2d):
    # DeepseekV3TopkRouter.forward: logits in (at least) float32, sigmoid, biased selection, unbiased weights
    hp = _hp(x2d.dtype)
    logits = F.linear(x2d.to(hp), P[pre + "mlp.gate.weight"].to(hp))
    scores = logits.sigmoid()
    idx = get_topk_indices(scores, P[pre + "mlp.gate.e_score_correction_bias"].to(hp), cfg)
    w = scores.gather(1, idx)
    if cfg.norm_topk_prob:
        w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
    w = w * cfg.routed_scaling_factor
    return idx, w


def moe(P, pre, cfg, x):
    # DeepseekV3MoE.forward: routed experts (weighted, accumulated in the router dtype) + shared experts
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    idx, w = router(P, pre, cfg, x2)
    out = torch.zeros(x2.shape, dtype=w.dtype)
    for e in range(cfg.n_routed_experts):
        tok, slot = torch.where(idx == e)
        if tok.numel() == 0:
            continue
        y = mlp(P, pre + f"mlp.experts.{e}.", x2[tok]) * w[tok, slot].unsqueeze(-1)
        out = out.index_add(0, tok, y.to(out.dtype))
    out = out.to(x.dtype).view(shape)
    return out + mlp(P, pre + "mlp.shared_experts.", x)


def decoder_layer(P, cfg, layer, x, cos, sin, opts):
    # DeepseekV3DecoderLayer.forward
    pre = f"model.layers.{layer}."
    h = x + attention(P, pre, cfg, rms_norm(x, P[pre + "input_layernorm.weight"], cfg.rms_norm_eps), cos, sin, opts)
    y = rms_norm(h, P[pre + "post_attention_layernorm.weight"], cfg.rms_norm_eps)
    y = moe(P, pre, cfg, y) if cfg.is_moe(layer) else mlp(P, pre + "mlp.", y)
    return h + y


def model_forward(P, cfg, ids, opts=DEFAULT_OPTS):
    """ids LongTensor [B,T].  Returns (logits [B,T,V], h_last [B,T,D] = last layer output before model.norm)."""
    dt = P["model.embed_tokens.weight"].dtype
    x = F.embedding(ids, P["model.embed_tokens.weight"])
    cos, sin = rope_cos_sin(cfg, ids.shape[1], dt)
    for layer in range(cfg.num_hidden_layers):
        x = decoder_layer(P, cfg, layer, x, cos, sin, opts)
    logits = linear(rms_norm(x, P["model.norm.weight"], cfg.rms_norm_eps), P["lm_head.weight"])
    return logits, x


def mtp_forward(P, cfg, ids, h_last, opts=DEFAULT_OPTS):
    """DeepSeek MTP (vLLM deepseek_mtp.py).  ids [B,T], h_last [B,T,D].  Returns logits [B,T-1,V];
    row i (input token ids[i+1], hidden h_last[i], RoPE position i) predicts ids[i+2]."""
    L = cfg.num_hidden_layers
    pre = f"model.layers.{L}."
    e = F.embedding(ids[:, 1:], P["model.embed_tokens.weight"])
    if opts.mtp_mask_pos0:
        e = torch.cat([torch.zeros_like(e[:, :1]), e[:, 1:]], dim=1)
    h = h_last[:, :-1]
    x = linear(torch.cat([rms_norm(e, P[pre + "enorm.weight"], cfg.rms_norm_eps),
                          rms_norm(h, P[pre + "hnorm.weight"], cfg.rms_norm_eps)], dim=-1),
               P[pre + "eh_proj.weight"])
    cos, sin = rope_cos_sin(cfg, x.shape[1], x.dtype)
    x = decoder_layer(P, cfg, L, x, cos, sin, opts)
    return linear(rms_norm(x, P[pre + "shared_head.norm.weight"], cfg.rms_norm_eps), P["lm_head.weight"])


# ----------------------------------------------------------------------------------------------------------------
# init / training
# ----------------------------------------------------------------------------------------------------------------
def init_params(cfg, seed, bias_std=0.01, std=None):
    """DeepseekV3PreTrainedModel._init_weights: normal(0, initializer_range) for Linear/Embedding/router weight,
    ones for RMSNorm; e_score_correction_bias gets normal(0, bias_std) (HF: zeros buffer) so it matters.
    Returns params without the MTP copies, in float32."""
    std = cfg.initializer_range if std is None else std
    g = torch.Generator().manual_seed(int(seed))
    copies = mtp_copy_names(cfg) if cfg.has_mtp else {}
    P = OrderedDict()
    for n, shape in expected_tensors(cfg).items():
        if n in copies:
            continue
        if "norm" in n.rsplit(".", 2)[-2]:  # input_layernorm, q_a_layernorm, enorm, shared_head.norm, ...
            P[n] = torch.ones(shape)
        elif n.endswith("e_score_correction_bias"):
            P[n] = torch.randn(shape, generator=g) * bias_std
        else:
            P[n] = torch.randn(shape, generator=g) * std
    return P


def train(P, cfg, data, steps, seq, seed, lr=3e-3, batch=8, mtp_weight=0.3, log=None):
    """AdamW on random windows of `data` (bytes); loss = CE(main) + mtp_weight * CE(MTP).  Float32.
    e_score_correction_bias is a buffer in HF and is not trained."""
    if len(data) < seq + 2:
        raise Refuse(f"training data has {len(data)} bytes; need at least seq+2 = {seq + 2}")
    g = torch.Generator().manual_seed(int(seed) + 1)
    leaves = {n: t.clone().float().requires_grad_(not n.endswith("e_score_correction_bias")) for n, t in P.items()}
    opt = torch.optim.AdamW([t for t in leaves.values() if t.requires_grad], lr=lr)
    buf = torch.tensor(list(data), dtype=torch.int64)
    for step in range(steps):
        starts = torch.randint(0, len(data) - seq, (batch,), generator=g)  # s + seq + 1 <= len(data)
        win = torch.stack([buf[s:s + seq + 1] for s in starts.tolist()])  # [B, seq+1]
        x, y = win[:, :seq], win[:, 1:]
        logits, h = model_forward(leaves, cfg, x)
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), y.reshape(-1))
        main = loss.item()
        if cfg.has_mtp and seq >= 2:
            ml = mtp_forward(leaves, cfg, x, h)
            loss = loss + mtp_weight * F.cross_entropy(ml.reshape(-1, cfg.vocab_size), win[:, 2:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log and (step % max(1, steps // 10) == 0 or step == steps - 1):
            log(f"step {step}/{steps} main CE {main:.4f} total {loss.item():.4f}")
    return OrderedDict((n, t.detach()) for n, t in leaves.items())


# ----------------------------------------------------------------------------------------------------------------
# evaluation / generation
# ----------------------------------------------------------------------------------------------------------------
def windows(n_bytes, T):
    n = n_bytes - 1
    out = [(w * T, T) for w in range(n // T)]
    if n % T:
        out.append(((n // T) * T, n % T))
    return out


def evaluate(P, cfg, data, T, opts=DEFAULT_OPTS, batch=16):
    if T < 1:
        raise Refuse("--ctx must be >= 1")
    if T > cfg.max_position_embeddings:
        raise Refuse(f"--ctx {T} exceeds max_position_embeddings {cfg.max_position_embeddings}")
    if len(data) < 2:
        raise Refuse("data file needs at least 2 bytes")
    buf = torch.tensor(list(data), dtype=torch.int64)
    wins = windows(len(data), T)
    tot, mtot, mcount = 0.0, 0.0, 0
    with torch.no_grad():
        i = 0
        while i < len(wins):
            length = wins[i][1]
            j = i
            while j < len(wins) and j - i < batch and wins[j][1] == length:
                j += 1
            starts = [s for s, _ in wins[i:j]]
            full = torch.stack([buf[s:s + length + 1] for s in starts])  # [b, len+1]
            x, y = full[:, :length], full[:, 1:]
            logits, h = model_forward(P, cfg, x, opts)
            tot += F.cross_entropy(logits.reshape(-1, cfg.vocab_size), y.reshape(-1), reduction="sum").item()
            if cfg.has_mtp and length >= 2:
                ml = mtp_forward(P, cfg, x, h, opts)
                mtot += F.cross_entropy(ml.reshape(-1, cfg.vocab_size), full[:, 2:].reshape(-1),
                                        reduction="sum").item()
                mcount += (length - 1) * (j - i)
            i = j
    res = OrderedDict(loss=tot / (len(data) - 1), tokens=len(data) - 1)
    if cfg.has_mtp:
        res["mtp_loss"] = (mtot / mcount) if mcount else None
        res["mtp_tokens"] = mcount
    return res


def argmax_lowest(v):
    m = v.max()
    return int((v == m).nonzero()[0].item())


def generate(P, cfg, prompt, n, opts=DEFAULT_OPTS):
    if len(prompt) < 1:
        raise Refuse("prompt must be non-empty")
    if len(prompt) + n > cfg.max_position_embeddings:
        raise Refuse(f"prompt ({len(prompt)}) + n ({n}) exceeds max_position_embeddings "
                     f"{cfg.max_position_embeddings}")
    ids = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model_forward(P, cfg, torch.tensor([ids], dtype=torch.int64), opts)
            t = argmax_lowest(logits[0, -1])
            out.append(t)
            ids.append(t)
    return out


# ----------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------
def _dtype_of(args):
    return torch.float32 if getattr(args, "float32", False) else torch.float64


def _opts(args):
    return Options(latent_eps=args.latent_eps, mtp_mask_pos0=getattr(args, "mtp_mask_pos0", False))


def _read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise Refuse(f"cannot read {path}: {e}")


def cmd_eval(args):
    cfg, P = load_model(args.model, _dtype_of(args))
    return evaluate(P, cfg, _read_bytes(args.data), args.ctx, _opts(args))


def cmd_generate(args):
    cfg, P = load_model(args.model, _dtype_of(args))
    if args.n < 0:
        raise Refuse("-n must be >= 0")
    return {"text_bytes": generate(P, cfg, args.prompt.encode("utf-8"), args.n, _opts(args))}


def cmd_logits(args):
    cfg, P = load_model(args.model, _dtype_of(args))
    ids = list(args.text.encode("utf-8"))
    if not ids:
        raise Refuse("--text must be non-empty")
    if len(ids) > cfg.max_position_embeddings:
        raise Refuse("--text longer than max_position_embeddings")
    with torch.no_grad():
        logits, h = model_forward(P, cfg, torch.tensor([ids]), _opts(args))
        res = OrderedDict(logits=[[float(v) for v in logits[0, -1].tolist()]])
        if args.mtp and cfg.has_mtp and len(ids) >= 2:
            ml = mtp_forward(P, cfg, torch.tensor([ids]), h, _opts(args))
            res["mtp_logits"] = [[float(v) for v in ml[0, -1].tolist()]]
    return res


def cmd_names(args):
    cfg = read_config(os.path.join(args.model, "config.json"))
    tensors, problems = read_weight_files(args.model)
    matched, missing, unexpected = check_names(cfg, tensors)
    res = OrderedDict(matched=matched, missing=missing, unexpected=unexpected)
    if problems:
        res["problems"] = problems
    return res


def cmd_write(args):
    cfg = read_config(args.config)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    P = init_params(cfg, args.seed)
    if args.train_steps:
        if not args.data:
            raise Refuse("--train-steps needs --data")
        if args.seq > cfg.max_position_embeddings:
            raise Refuse("--seq exceeds max_position_embeddings")
        torch.manual_seed(int(args.seed))
        P = train(P, cfg, _read_bytes(args.data), args.train_steps, args.seq, args.seed,
                  log=lambda s: print(s, file=sys.stderr))
    count = write_checkpoint(args.out, cfg, P, dtype, args.shards, args.tied)
    return OrderedDict(out=args.out, tensors=count)


def build_parser():
    ap = argparse.ArgumentParser(description="Independent reference of HF DeepSeek-V3 (+MTP) on byte tokens.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--model", required=True, help="checkpoint directory (config.json + safetensors)")
        p.add_argument("--float32", action="store_true", help="compute in float32 (default float64)")
        p.add_argument("--latent-eps", choices=["hf", "config"], default="hf",
                       help="eps of q_a_layernorm/kv_a_layernorm: hf = 1e-6 (HF default), config = rms_norm_eps "
                            "(what vLLM does)")

    p = sub.add_parser("eval", help="window-protocol cross-entropy")
    common(p)
    p.add_argument("--data", required=True)
    p.add_argument("--ctx", type=int, required=True)
    p.add_argument("--mtp-mask-pos0", action="store_true",
                   help="zero the MTP input embedding at position 0 (vLLM's quirk); default off")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("generate", help="greedy generation, full forward each step")
    common(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("-n", type=int, required=True)
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("logits", help="last-position logits of a text")
    common(p)
    p.add_argument("--text", required=True)
    p.add_argument("--mtp", action="store_true", help="also print the MTP logits at the last position")
    p.add_argument("--mtp-mask-pos0", action="store_true")
    p.set_defaults(fn=cmd_logits)

    p = sub.add_parser("names", help="tensor-name diagnostics (never fails on mismatch)")
    p.add_argument("--model", required=True)
    p.set_defaults(fn=cmd_names)

    p = sub.add_parser("write", help="write a random (optionally briefly trained) checkpoint")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="f32")
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--train-steps", type=int, default=0)
    p.add_argument("--data")
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--tied", action="store_true", help="store the MTP module's embedding/head copies once (omit them)")
    p.set_defaults(fn=cmd_write)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    try:
        res = args.fn(args)
    except Refuse as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    json.dump(res, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
