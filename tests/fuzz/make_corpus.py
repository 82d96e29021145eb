#!/usr/bin/env python3
"""Regenerates the fuzz seed corpus (tests/fuzz/corpus/<harness>/) and the libFuzzer dictionaries
(tests/fuzz/dict/<harness>.dict). The output is committed; run this only to change the seeds:

    python3 tests/fuzz/make_corpus.py

Files named valid-* must be accepted by the reader (test_fuzz_regressions.cpp checks it); the
others are near-misses that each reader must reject with a clear error, which gives the fuzzer
a head start on every check. Keep seeds small: libFuzzer's default maximum input length is the
largest seed.
"""
import json
import shutil
import struct
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent.parent


def safetensors(header, data=b"", pad=True):
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def floats(*values):
    return struct.pack("<%df" % len(values), *values)


def halves(*bits):
    return struct.pack("<%dH" % len(bits), *bits)


def write(harness, name, content):
    d = FUZZ / "corpus" / harness
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(content if isinstance(content, bytes) else content.encode())


def main():
    for d in (FUZZ / "corpus").glob("*"):
        shutil.rmtree(d)

    # --- safetensors -------------------------------------------------------------------------
    two = {
        "__metadata__": {"format": "pt", "producer": "moe 0.1.0"},
        "embed": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "norm": {"dtype": "F32", "shape": [4], "data_offsets": [24, 40]},
    }
    data = floats(0.5, -1.0, 2.0, 0.0, 1e-3, -7.25, 1.0, 1.0, 1.0, 1.0)
    write("safetensors", "valid-two-tensors.safetensors", safetensors(two, data))
    write("safetensors", "valid-empty-header.safetensors", safetensors({}))
    write("safetensors", "valid-metadata-only.safetensors", safetensors({"__metadata__": {"format": "pt"}}))
    write("safetensors", "valid-scalar-and-empty.safetensors", safetensors({
        "scalar": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]},
        "empty": {"dtype": "F32", "shape": [0, 5], "data_offsets": [4, 4]},
    }, floats(3.0)))
    write("safetensors", "valid-unpadded.safetensors",
          safetensors({"w": {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]}}, floats(1.5), pad=False))
    write("safetensors", "reject-truncated.safetensors", safetensors(two, data)[:-6])
    write("safetensors", "reject-short.safetensors", b"\x10\x00\x00")
    write("safetensors", "reject-header-past-end.safetensors", struct.pack("<Q", 4096) + b"{}")
    write("safetensors", "reject-header-huge.safetensors", struct.pack("<Q", 1 << 62) + b"{}      ")
    write("safetensors", "reject-not-json.safetensors", struct.pack("<Q", 8) + b"{\"a\":[1,")
    write("safetensors", "reject-overlap.safetensors", safetensors({
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }, floats(1, 2, 3)))
    # BF16 and F16 (HF checkpoints): values with a rounding history, an F16 subnormal, infinities
    # and NaNs (read as such; only the checkpoint loader refuses non-finite values), tensors of
    # falling element size so that each is aligned, as HF's writer lays them out.
    write("safetensors", "valid-bf16-f16-f32.safetensors", safetensors({
        "bias": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "wb": {"dtype": "BF16", "shape": [3], "data_offsets": [4, 10]},
        "wh": {"dtype": "F16", "shape": [2, 2], "data_offsets": [10, 18]},
    }, floats(0.25) + halves(0x3f80, 0xc020, 0x3e20) + halves(0x3c00, 0x8001, 0x03ff, 0x7bff)))
    write("safetensors", "valid-half-specials.safetensors", safetensors({
        "h": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]},
        "b": {"dtype": "BF16", "shape": [4], "data_offsets": [8, 16]},
    }, halves(0x7c00, 0xfc00, 0x7e00, 0x8000) + halves(0x7f80, 0xff80, 0x7fc1, 0x0001)))
    write("safetensors", "reject-dtype.safetensors", safetensors({
        "a": {"dtype": "I8", "shape": [4], "data_offsets": [0, 4]}}, b"\0" * 4))
    write("safetensors", "reject-bf16-f32-sized.safetensors", safetensors({
        "a": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 8]}}, floats(1, 2)))
    write("safetensors", "reject-f16-misaligned.safetensors", safetensors({
        "a": {"dtype": "F16", "shape": [1], "data_offsets": [1, 3]}}, b"\0" * 4))
    write("safetensors", "reject-misaligned.safetensors", safetensors({
        "a": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}, b"\0" * 8))
    write("safetensors", "reject-shape-mismatch.safetensors", safetensors({
        "a": {"dtype": "F32", "shape": [3, -1], "data_offsets": [0, 8]}}, floats(1, 2)))
    write("safetensors", "reject-offsets-past-end.safetensors", safetensors({
        "a": {"dtype": "F32", "shape": [1024], "data_offsets": [0, 4096]}}, floats(1)))

    # --- config ------------------------------------------------------------------------------
    for name in ("tiny", "small", "small-e64"):
        write("config", "valid-configs-%s.json" % name, (ROOT / "configs" / ("%s.json" % name)).read_text())
    write("config", "valid-defaults.json", '{"model": {}}')
    flat = json.loads((ROOT / "configs" / "tiny.json").read_text())["model"]
    flat.update({"model_type": "moe", "architectures": ["MoeForCausalLM"], "torch_dtype": "float32",
                 "head_dim": 24})
    write("config", "valid-checkpoint-config.json", json.dumps(flat, indent=2))
    write("config", "valid-head-dim-null.json",
          '{"model": {"hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": null}, "train": {"seq": 64}}')
    write("config", "reject-unknown-key.json", '{"model": {"hiden_size": 64}}')
    write("config", "reject-wrong-type.json", '{"model": {"hidden_size": "64"}, "train": {"lr": true}}')
    write("config", "reject-inconsistent.json",
          '{"model": {"n_routed_experts": 6, "n_group": 4, "topk_group": 5, "num_experts_per_tok": 9}}')
    write("config", "reject-absurd.json",
          '{"model": {"hidden_size": 16777216, "num_hidden_layers": 4096, "vocab_size": 1048576}}')
    write("config", "reject-train.json",
          '{"model": {}, "train": {"batch": 100000, "seq": 256, "min_lr": 1.0, "balance": "loss_free"}}')
    write("config", "reject-not-json.json", '{"model": {"vocab_size": 256,}')
    write("config", "reject-top-level.json", '[{"model": {}}]')
    write("config", "reject-big-integer.json", '{"model": {"vocab_size": 18446744073709551615, "head_dim": 1e300}}')

    # --- metrics -----------------------------------------------------------------------------
    write("metrics", "valid-fixture.jsonl", (ROOT / "tests" / "fixtures" / "metrics_small.jsonl").read_text())
    train = {"kind": "train", "step": 1, "loss": 5.5, "lr": 0.001, "grad_norm": 1.0, "tokens_per_s": 900.0,
             "balance_loss": 0.0, "skipped": False,
             "layers": [{"layer": 1, "counts": [5, 3, 0, 8], "bias": [0.0, 0.001, -0.001, 0.0], "maxvio": 0.9}]}
    train2 = dict(train, step=2, loss=5.0)
    evalp = {"kind": "eval", "step": 2, "val_loss": 5.1, "tokens": 64,
             "layers": [{"layer": 1, "counts": [16, 16, 16, 16], "maxvio": 0.0}]}
    lines = [json.dumps(x) for x in (evalp, train, train2, evalp)]
    write("metrics", "valid-short-run.jsonl", "\n".join(lines + ['{"kind": "end", "step": 2}']) + "\n")
    write("metrics", "valid-torn-last-line.jsonl", "\n".join(lines) + "\n" + lines[1][:30])
    write("metrics", "valid-eval-only.jsonl", json.dumps(evalp) + "\n\n")
    write("metrics", "valid-empty.jsonl", "")
    write("metrics", "reject-garbage.jsonl", lines[0] + "\nnot json at all\n")
    write("metrics", "reject-wrong-types.jsonl", json.dumps(dict(train, step="one", layers=[{"layer": 1}])) + "\n")
    write("metrics", "reject-unknown-kind.jsonl", '{"kind": "warmup", "step": 1}\n')
    write("metrics", "reject-layer-mismatch.jsonl",
          lines[1] + "\n" + json.dumps(dict(train2, layers=train["layers"] * 2)) + "\n")
    write("metrics", "reject-bias-size.jsonl",
          json.dumps(dict(train, layers=[{"layer": 1, "counts": [1, 2], "bias": [0.0], "maxvio": 0.1}])) + "\n")

    # --- dictionaries ------------------------------------------------------------------------
    model_keys = list(flat.keys())
    train_keys = list(json.loads((ROOT / "configs" / "tiny.json").read_text())["train"].keys())
    common = ['"{"', '"}"', '"["', '"]"', '":"', '","', '"null"', '"true"', '"false"', '"-1"', '"0"',
              '"1e308"', '"18446744073709551615"', '"9223372036854775807"', '"-9223372036854775808"',
              '"16777216"', '"0.5"', '"\\""']
    dicts = {
        "config": common + ['"\\"%s\\""' % k for k in model_keys + train_keys + [
            "model", "train", "sigmoid", "softmax", "none", "aux", "loss-free", "loss-free+seq"]],
        "metrics": common + ['"\\"%s\\""' % k for k in [
            "kind", "train", "eval", "end", "step", "loss", "lr", "grad_norm", "tokens_per_s", "balance_loss",
            "skipped", "layers", "layer", "counts", "bias", "maxvio", "val_loss", "tokens"]] + ['"\\x0a"'],
        "safetensors": common + ['"\\"%s\\""' % k for k in [
            "__metadata__", "dtype", "shape", "data_offsets", "F32", "F16", "BF16", "I8"]] + [
            '"\\x00\\x00\\x00\\x00\\x00\\x00\\x00"', '"\\x00\\x00\\x80\\x3f"', '"\\x80\\x3f"', '"\\x00\\x3c"',
            '"\\x80\\x7f"', '"\\x00\\x7c"', '"\\x01\\x00"'],
    }
    (FUZZ / "dict").mkdir(exist_ok=True)
    for harness, tokens in dicts.items():
        (FUZZ / "dict" / ("%s.dict" % harness)).write_text(
            "# libFuzzer dictionary for fuzz_%s (generated by tests/fuzz/make_corpus.py)\n" % harness +
            "\n".join(tokens) + "\n")


if __name__ == "__main__":
    main()
