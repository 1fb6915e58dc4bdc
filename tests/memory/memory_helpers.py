"""Tiny models, a byte tokenizer and a small corpus for the memory-bank tests."""

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import hf_seqmodels

TOPICS = {
    "chem": "The element {} has atomic number {} and reacts with oxygen to form a stable oxide in the laboratory.",
    "geo": "The river {} flows through the valley past {} villages before it reaches the northern sea coast.",
    "music": "The composer {} wrote {} symphonies and a famous opera that premiered in the old city theatre.",
    "code": "def {}(x):\n    return x * {} + len(str(x))  # python function with a loop and a return value",
}


def corpus(n_per_topic=12):
    out = []
    for t, tmpl in TOPICS.items():
        for i in range(n_per_topic):
            out.append(tmpl.format(f"{t}{i}x", i + 3))
    return out


class ByteTokenizer:
    """ids = UTF-8 bytes + 3 (0 pad, 1 bos, 2 eos)."""

    pad_token, eos_token = "<pad>", "</s>"
    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def encode(self, text):
        return [b + 3 for b in text.encode("utf-8")]

    def batch_decode(self, ids, skip_special_tokens=True):
        return [bytes(max(0, t - 3) for t in row if t >= 3).decode("utf-8", "replace") for row in ids]

    def __call__(self, texts, return_tensors="pt", padding=True, truncation=True, max_length=512):
        rows = [self.encode(t)[:max_length] for t in texts]
        n = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), n, dtype=torch.long)
        mask = torch.zeros(len(rows), n, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def tiny_gla(layers=2, hidden=32, seed=0):
    torch.manual_seed(seed)
    cfg = hf_seqmodels.GLAConfig(
        vocab_size=260,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_heads=2,
        intermediate_size=64,
        initializer_range=0.2,
    )
    return AutoModelForCausalLM.from_config(cfg).eval()


def tiny_llama(layers=2, hidden=48, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=260,
        hidden_size=hidden,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=6,
        num_key_value_heads=2,
        initializer_range=0.2,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).eval()


MODELS = {"gla": tiny_gla, "llama": tiny_llama}


def randomize_bank(model, std=0.5):
    """Give every block (down projections included) random weights, so the memory changes outputs."""
    with torch.no_grad():
        for p in model.memory_bank.parameters():
            p.normal_(std=std)


def ids_for(texts, tok=None, n=24):
    tok = tok or ByteTokenizer()
    return torch.stack([torch.tensor((tok.encode(t) * 4)[:n]) for t in texts])
