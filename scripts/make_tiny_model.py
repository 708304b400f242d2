#!/usr/bin/env python3
"""Generate a tiny Llama-architecture model with random weights, offline.

Writes the same model twice:
  * a Hugging Face directory (config.json, generation_config.json,
    model.safetensors in bfloat16, tokenizer.json, tokenizer_config.json,
    special_tokens_map.json) that vLLM loads with no hub access;
  * a GGUF file (llama architecture, F32) for llama.cpp's llama-server,
    with the same weights and the same byte-level BPE vocabulary and merges.
Every weight is a bfloat16 value (vLLM's CPU dtype), so the float32 GGUF
holds exactly the same numbers.

Deterministic from --seed: the same seed gives byte-identical files.
Needs numpy, tokenizers and gguf (no torch).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys

import numpy as np

SPECIAL_TOKENS = ["<s>", "</s>", "<pad>"]  # ids 0, 1, 2
BOS_ID, EOS_ID, PAD_ID = 0, 1, 2
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def corpus(seed: int, n_lines: int = 4000) -> list[str]:
    """Pseudo-English text from a fixed syllable set, so BPE learns merges."""
    rng = random.Random(seed)
    onsets = ["", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "th", "st", "tr", "w"]
    vowels = ["a", "e", "i", "o", "u", "ea", "ou", "ai"]
    codas = ["", "n", "r", "s", "t", "l", "ng", "nd", "st"]
    words = []
    for _ in range(600):
        words.append("".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                             for _ in range(rng.choice([1, 1, 2, 2, 3]))))
    punct = [".", ",", "?", "!", ";", ":"]
    lines = []
    for _ in range(n_lines):
        ws = [rng.choice(words) for _ in range(rng.randint(3, 14))]
        if rng.random() < 0.3:
            ws.insert(rng.randrange(len(ws)), str(rng.randint(0, 9999)))
        ws[0] = ws[0].capitalize()
        lines.append(" ".join(ws) + rng.choice(punct))
    return lines


def train_tokenizer(seed: int, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(seed), trainer=trainer)
    # Prepend <s> like Llama tokenizers do (add_bos_token).
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
    )
    vocab = tok.get_vocab()
    assert [vocab[t] for t in SPECIAL_TOKENS] == [BOS_ID, EOS_ID, PAD_ID], "special token ids moved"
    assert len(vocab) == vocab_size, f"vocabulary has {len(vocab)} tokens, wanted {vocab_size}"
    return tok


def bf16_round(a: np.ndarray) -> np.ndarray:
    """Round float32 to the nearest bfloat16 value (ties to even), kept as float32."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    u = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return u.view(np.float32)


def save_safetensors_bf16(weights: dict[str, np.ndarray], path: str) -> None:
    """Write bf16-exact float32 arrays as a BF16 safetensors file (numpy has no bfloat16)."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(weights):
        t = weights[name]
        b = (np.ascontiguousarray(t, dtype=np.float32).view(np.uint32) >> np.uint32(16)).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)


def make_weights(seed: int, cfg: dict) -> dict[str, np.ndarray]:
    """HF-named tensors with bf16-exact values. Wide lm_head so greedy choices are not near-ties."""
    rng = np.random.default_rng(seed)
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg["head_dim"]
    nq, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def lin(out_dim, in_dim, std=0.02):
        return bf16_round(rng.standard_normal((out_dim, in_dim)) * std)

    w = {"model.embed_tokens.weight": lin(v, h, 1.0)}
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        w[p + "input_layernorm.weight"] = np.ones(h, np.float32)
        w[p + "self_attn.q_proj.weight"] = lin(nq * hd, h, 0.1)
        w[p + "self_attn.k_proj.weight"] = lin(nkv * hd, h, 0.1)
        w[p + "self_attn.v_proj.weight"] = lin(nkv * hd, h, 0.1)
        w[p + "self_attn.o_proj.weight"] = lin(h, nq * hd, 0.1)
        w[p + "post_attention_layernorm.weight"] = np.ones(h, np.float32)
        w[p + "mlp.gate_proj.weight"] = lin(i, h, 0.1)
        w[p + "mlp.up_proj.weight"] = lin(i, h, 0.1)
        w[p + "mlp.down_proj.weight"] = lin(h, i, 0.1)
    w["model.norm.weight"] = np.ones(h, np.float32)
    w["lm_head.weight"] = lin(v, h, 0.5)
    return w


def write_hf(out: str, cfg: dict, weights: dict, tok) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}, f, indent=2)
    save_safetensors_bf16(weights, os.path.join(out, "model.safetensors"))
    tok.save(os.path.join(out, "tokenizer.json"))
    tcfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": cfg["max_position_embeddings"],
        "chat_template": CHAT_TEMPLATE,
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(tcfg, f, indent=2)
    with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}, f, indent=2)


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF Llama q/k rows use the rotate-half RoPE layout; GGUF llama expects the
    interleaved one (same permutation as llama.cpp's convert_hf_to_gguf)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: str, cfg: dict, weights: dict, tok) -> None:
    import gguf

    nq, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    tmp = path + ".tmp"
    wr = gguf.GGUFWriter(tmp, "llama")
    wr.add_name("tiny-llama")
    wr.add_context_length(cfg["max_position_embeddings"])
    wr.add_embedding_length(cfg["hidden_size"])
    wr.add_block_count(cfg["num_hidden_layers"])
    wr.add_feed_forward_length(cfg["intermediate_size"])
    wr.add_head_count(nq)
    wr.add_head_count_kv(nkv)
    wr.add_rope_dimension_count(cfg["head_dim"])
    wr.add_rope_freq_base(cfg["rope_theta"])
    wr.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    wr.add_vocab_size(cfg["vocab_size"])
    wr.add_file_type(gguf.LlamaFileType.ALL_F32)

    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    types = [gguf.TokenType.CONTROL if t in SPECIAL_TOKENS else gguf.TokenType.NORMAL for t in tokens]
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("gpt-2")  # GPT-2 split regex, as the ByteLevel pre-tokenizer uses
    wr.add_token_list(tokens)
    wr.add_token_types(types)
    wr.add_token_merges(merges)
    wr.add_bos_token_id(BOS_ID)
    wr.add_eos_token_id(EOS_ID)
    wr.add_pad_token_id(PAD_ID)
    wr.add_add_bos_token(True)
    wr.add_add_eos_token(False)
    wr.add_chat_template(CHAT_TEMPLATE)

    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    per_layer = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for layer in range(cfg["num_hidden_layers"]):
        for hf, gg in per_layer.items():
            names[f"model.layers.{layer}.{hf}.weight"] = f"blk.{layer}.{gg}.weight"
    for hf_name, t in weights.items():
        if hf_name.endswith("q_proj.weight"):
            t = permute_rope(t, nq)
        elif hf_name.endswith("k_proj.weight"):
            t = permute_rope(t, nkv)
        wr.add_tensor(names[hf_name], np.ascontiguousarray(t))

    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    os.replace(tmp, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hf-dir", required=True, help="output Hugging Face model directory")
    ap.add_argument("--gguf", required=True, help="output GGUF file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab-size", type=int, default=512)
    ap.add_argument("--hidden-size", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate-size", type=int, default=256)
    ap.add_argument("--max-position-embeddings", type=int, default=4096)
    a = ap.parse_args()
    if a.hidden_size % a.heads or a.heads % a.kv_heads:
        ap.error("hidden size must divide by heads, heads by kv heads")

    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": a.vocab_size,
        "hidden_size": a.hidden_size,
        "intermediate_size": a.intermediate_size,
        "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads,
        "head_dim": a.hidden_size // a.heads,
        "hidden_act": "silu",
        "max_position_embeddings": a.max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "torch_dtype": "bfloat16",
        "use_cache": True,
    }
    tok = train_tokenizer(a.seed, a.vocab_size)
    weights = make_weights(a.seed, cfg)
    write_hf(a.hf_dir, cfg, weights, tok)
    write_gguf(a.gguf, cfg, weights, tok)
    n = sum(t.size for t in weights.values())
    print(f"tiny llama: {n} parameters, vocab {a.vocab_size}; HF dir {a.hf_dir}, GGUF {a.gguf}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
