"""HMT (Hierarchical Memory Transformer, He et al., NAACL 2025, arXiv 2405.06067) around a pretrained causal LM.

``attach_hmt(model, HMTConfig(...))`` adds the submodule ``hmt`` (:class:`HMTMemory`: +2 d + 2 d h parameters) and
replaces the instance's ``forward``, ``generate`` and ``save_pretrained``; the model's class, modules and weights
are untouched (its decoder, ``get_decoder()``, and head, ``get_output_embeddings()``, are called as they are, so a
PEFT adapter injected into them is applied). Per segment ``n`` of ``segment_length`` tokens ``x_n`` (embedded with
the model's own input embedding; the last segment may be shorter), following the reference (OswaldHe/HMT-pytorch,
``modeling_rmt/language_modeling.py`` ``RecurrentWrapper.forward``/``MemoryCell``, ``long_mem_cross_attn.py``)::

    S_n = dec([T, x_n[:summary_tokens], T])[-1]               summary pass (reference: ``q_mem``)
    P_n = softmax((W_q S_n) (W_k M)^T / sqrt(h)) M            recall over M = the last memory_depth M_j, j < n
    h   = dec([P_n, x_{n-1}[-num_sensory:], x_n, P_n])        main pass
    logits_n = head(h[segment positions]);  M_n = h[-1]

``dec`` is the base's decoder (its final norm included: the reference reads ``hidden_states[-1]``, which is the
normed output), each pass with positions from 0, as the reference calls the model with ``inputs_embeds`` alone.
Choices against the reference:

- ``T`` (``memory_query``) is the reference's ``mem`` (one embedding, init std of the token embeddings); the summary
  pass has no sensory tokens (the reference calls its cell without ``prepend_state``) and reads
  ``min(len(x_n), summary_tokens)`` tokens (``seg[:, :round(segment_size * sum_fraction)]``).
- segment 0 has no memory to recall: ``P_0`` is the learned ``initial_memory`` (the cell's ``memory`` parameter,
  used when ``memory_state is None``), no sensory tokens; we skip its summary pass (the reference runs it and
  discards it).
- stage 1 (``recall=False``, the reference's ``RecurrentWrapper`` without ``emb``): ``P_n = M_{n-1}``.
- recall's values are the memory embeddings themselves (no value projection), the softmax in fp32 (or wider); the
  scale is always ``1/sqrt(h)``: the reference divides by ``h`` instead when ``d >= 4096 and h >= 4096`` outside
  generation, so its training and generation disagree there (not copied).
- one memory embedding per segment (the reference's ``num_mem_tokens`` is always 1 in ``main.py``); the reference's
  memory map (``mem_map``, only used by its "switch" dynamic-reading experiment) and browse/extra-token reading
  are not part of HMT and are left out.
- truncated backpropagation: the reference's ``manage_gradients`` assigns ``memory_state.detach()`` to a local
  variable, so it never detaches anything (and it is never configured in ``main.py``: ``k2`` is unset). Here the
  memory embeddings written before the last ``bptt_segments`` segments of the sequence are detached where they are
  stored, so the loss reaches back through exactly ``bptt_segments`` main passes (recall reads the detached copies).
- causality: ``P_n`` depends on the first ``summary_tokens`` tokens of the segment it prompts (the paper's design),
  only through recall's weights over the past memory embeddings. :func:`hmt_generate` keeps this exact: while the
  current segment is no longer than ``summary_tokens`` it recomputes ``P_n`` and the segment's pass each step.
"""

from __future__ import annotations

import dataclasses
import math
import types

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import ModelOutput

from hf_seqmodels.compat import CACHE_KWARG, output_cache
from hf_seqmodels.layers.families import get_family

from .config import HMTConfig


class HMTMemory(nn.Module):
    """What HMT adds: the memory-query token ``T``, the first segment's memory ``P_0`` and recall's projections."""

    def __init__(self, hidden_size: int, recall_hidden_size: int, std: float = 0.02, dtype=None, device=None):
        super().__init__()
        kw = {"dtype": dtype, "device": device}
        self.memory_query = nn.Parameter(torch.randn(1, hidden_size, **kw) * std)  # reference `mem`
        self.initial_memory = nn.Parameter(torch.randn(1, hidden_size, **kw) * std)  # `memory_cell.memory`
        self.recall_q = nn.Linear(hidden_size, recall_hidden_size, bias=False, **kw)  # `cross_attn.wq`
        self.recall_k = nn.Linear(hidden_size, recall_hidden_size, bias=False, **kw)  # `cross_attn.wk`

    def recall(self, summary: torch.Tensor, memories: torch.Tensor) -> torch.Tensor:
        """``summary`` [B, d], ``memories`` [B, M, d] -> [B, d]: attention of the summary over the memories."""
        q = self.recall_q(summary)
        k = self.recall_k(memories)
        scores = torch.einsum("bh,bmh->bm", q, k) / math.sqrt(q.shape[-1])
        weights = F.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1).to(memories.dtype)
        return torch.einsum("bm,bmd->bd", weights, memories)


@dataclasses.dataclass
class HMTOutput(ModelOutput):
    """``logits`` [B, L, V] over the text tokens; ``memory_embeddings`` [B, N, d]: ``M_n`` of every segment."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    memory_embeddings: torch.Tensor | None = None


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _hmt_config(model) -> HMTConfig:
    cfg = getattr(model, "_hmt_config", None)
    if cfg is None:
        raise ValueError(f"{type(model).__name__} has no HMT attached (hf_seqmodels.attach_hmt)")
    return cfg


class _Parts:
    """The base's pieces HMT calls: embedding, decoder (final norm included), head; and HMT's module."""

    def __init__(self, model):
        base = _base(model)
        self.config = _hmt_config(model)
        self.embed = base.get_input_embeddings()
        self.decoder = base.get_decoder()
        self.head = base.get_output_embeddings()
        self.hmt = model.hmt

    def decode(self, x, cache=None, use_cache=False):
        out = self.decoder(inputs_embeds=x, use_cache=use_cache, **{CACHE_KWARG: cache})
        return out.last_hidden_state, (output_cache(out) if use_cache else None)

    def prompt(self, n, seg_emb, memories):
        """``P_n`` [B, d] from the segment's embeddings and the stored memory embeddings (list of [B, d])."""
        B = seg_emb.shape[0]
        if n == 0:
            return self.hmt.initial_memory.expand(B, -1)
        if not self.config.recall:
            return memories[-1]
        t = self.hmt.memory_query.expand(B, 1, -1)
        h, _ = self.decode(torch.cat([t, seg_emb[:, : self.config.summary_tokens], t], dim=1))
        return self.hmt.recall(h[:, -1], torch.stack(memories[-self.config.memory_depth :], dim=1))

    def main_pass(self, p, sens_emb, seg_emb, trailing=True, use_cache=False):
        """(hidden states of the segment's tokens, M_n or None, cache)."""
        parts = [p[:, None], sens_emb, seg_emb] + ([p[:, None]] if trailing else [])
        h, cache = self.decode(torch.cat([x for x in parts if x is not None], dim=1), use_cache=use_cache)
        start = 1 + (0 if sens_emb is None else sens_emb.shape[1])
        return h[:, start : start + seg_emb.shape[1]], (h[:, -1] if trailing else None), cache


def _check_ids(input_ids, attention_mask, where):
    if not torch.is_tensor(input_ids) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise ValueError(f"{where}: `input_ids` must be a LongTensor [batch, length], got {_describe(input_ids)}")
    if input_ids.shape[1] == 0:
        raise ValueError(f"{where}: `input_ids` is empty (length 0)")
    if attention_mask is not None:
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"{where}: `attention_mask` has shape {tuple(attention_mask.shape)}, `input_ids` "
                f"{tuple(input_ids.shape)}"
            )
        if not bool((attention_mask == 1).all()):
            raise ValueError(
                f"{where}: `attention_mask` has padding; HMT cuts every row into segments at the same positions, "
                "so pass rows of equal length without padding (mask out labels with -100 instead)"
            )


def _describe(x):
    return f"{x.dtype} tensor of shape {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__


def _sensory(cfg, prev_emb):
    return prev_emb[:, prev_emb.shape[1] - cfg.num_sensory :] if cfg.num_sensory else None


def hmt_forward(model, input_ids=None, attention_mask=None, labels=None, num_items_in_batch=None, **kwargs):
    """HMT over the whole sequence, segment by segment (see the module docstring); ``labels`` as in transformers'
    causal LMs (shifted inside, -100 ignored). Returns :class:`HMTOutput`."""
    unknown = sorted(k for k, v in kwargs.items() if v is not None and k not in ("return_dict", "use_cache"))
    if unknown:
        raise TypeError(f"HMT forward: unsupported arguments {unknown}")
    _check_ids(input_ids, attention_mask, "HMT forward")
    if labels is not None and tuple(labels.shape) != tuple(input_ids.shape):
        raise ValueError(f"HMT forward: `labels` has shape {tuple(labels.shape)}, `input_ids` {tuple(input_ids.shape)}")
    parts = _Parts(model)
    cfg = parts.config
    S = cfg.segment_length
    emb = parts.embed(input_ids)
    n_seg = -(-input_ids.shape[1] // S)
    keep_from = 0 if cfg.bptt_segments is None else n_seg - cfg.bptt_segments
    memories, written, logits = [], [], []
    for n in range(n_seg):
        seg = emb[:, n * S : (n + 1) * S]
        p = parts.prompt(n, seg, memories)
        sens = _sensory(cfg, emb[:, (n - 1) * S : n * S]) if n else None
        h, m, _ = parts.main_pass(p, sens, seg)
        logits.append(parts.head(h))
        if n < keep_from:
            m = m.detach()  # truncated BPTT: memory written before the last bptt_segments segments
        written.append(m)
        memories = (memories + [m])[-cfg.memory_depth :]
    logits = torch.cat(logits, dim=1)
    loss = None
    if labels is not None:
        lab = labels[:, 1:].reshape(-1).to(logits.device)
        flat = logits[:, :-1].reshape(-1, logits.shape[-1])
        loss = F.cross_entropy(flat.to(torch.promote_types(flat.dtype, torch.float32)), lab, reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else (lab != -100).sum()
        loss = loss / count
    return HMTOutput(loss=loss, logits=logits, memory_embeddings=torch.stack(written, dim=1))


def _pick(logits, do_sample, temperature, top_k, top_p):
    if not do_sample:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1)[:, 0]


@torch.no_grad()
def hmt_generate(
    model,
    input_ids=None,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    attention_mask=None,
    **kwargs,
):
    """Decode with the memory carried across segment boundaries; returns ``[B, L + new]`` token ids.

    Complete prompt segments run once (their memory embeddings kept); the current segment's main pass is cached
    and extended token by token. When a segment fills, the cached pass is closed with the trailing ``P_n`` (one
    step) to write ``M_n``, and the next token opens a new segment. While the current segment is at most
    ``summary_tokens`` long and recall is on, ``P_n`` depends on every token of it (the summary pass), so each step
    recomputes ``P_n`` and the segment's pass: tokens equal a full :func:`hmt_forward` over the text every step.
    """
    unknown = sorted(k for k, v in kwargs.items() if v is not None and k not in ("use_cache", "return_dict"))
    if unknown:
        raise TypeError(f"HMT generate: unsupported arguments {unknown}")
    _check_ids(input_ids, attention_mask, "HMT generate")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"HMT generate: `max_new_tokens` must be an integer >= 1, got {max_new_tokens!r}")
    if do_sample and not temperature > 0:
        raise ValueError(f"HMT generate: `temperature` must be > 0, got {temperature!r}")
    parts = _Parts(model)
    cfg = parts.config
    S, L = cfg.segment_length, input_ids.shape[1]
    n = (L - 1) // S  # the segment holding the last prompt token
    memories, sens = [], None
    for j in range(n):  # the prompt's complete segments
        seg = parts.embed(input_ids[:, j * S : (j + 1) * S])
        _, m, _ = parts.main_pass(parts.prompt(j, seg, memories), sens, seg)
        memories = (memories + [m])[-cfg.memory_depth :]
        sens = _sensory(cfg, seg)

    def open_segment(cur):
        seg = parts.embed(cur)
        p = parts.prompt(n, seg, memories)
        h, _, cache = parts.main_pass(p, sens, seg, trailing=False, use_cache=True)
        return parts.head(h[:, -1]), cache, p

    cur = input_ids[:, n * S :]
    logits, cache, p = open_segment(cur)
    out = [input_ids]
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for step in range(max_new_tokens):
        tok = _pick(logits, do_sample, temperature, top_k, top_p)
        if eos_token_id is not None:
            if pad_token_id is not None:
                tok = torch.where(done, torch.full_like(tok, pad_token_id), tok)
            done |= tok == eos_token_id
        out.append(tok[:, None])
        if step == max_new_tokens - 1 or (eos_token_id is not None and bool(done.all())):
            break
        if cur.shape[1] == S:  # the segment is full: write M_n with the trailing P_n, then open the next one
            h, _ = parts.decode(p[:, None], cache=cache, use_cache=True)
            memories = (memories + [h[:, -1]])[-cfg.memory_depth :]
            sens = _sensory(cfg, parts.embed(cur))
            n += 1
            cur = tok[:, None]
            logits, cache, p = open_segment(cur)
        elif cfg.recall and n > 0 and cur.shape[1] < cfg.summary_tokens:  # P_n still reads the new token
            cur = torch.cat([cur, tok[:, None]], dim=1)
            logits, cache, p = open_segment(cur)
        else:
            cur = torch.cat([cur, tok[:, None]], dim=1)
            h, cache = parts.decode(parts.embed(tok[:, None]), cache=cache, use_cache=True)
            logits = parts.head(h[:, -1])
    return torch.cat(out, dim=1)


def _is_peft(model):
    return hasattr(model, "get_base_model") and hasattr(model, "peft_config")


def attach_hmt(model, config: HMTConfig):
    """Give ``model`` (a transformers causal LM of a supported family, or a PEFT model around one) HMT, in place;
    returns ``model``. ``config.freeze_base`` freezes the base's weights (a PEFT model's adapters stay
    trainable)."""
    if not isinstance(config, HMTConfig):
        raise TypeError(f"attach_hmt: `config` must be an HMTConfig, got {type(config).__name__}")
    if getattr(model, "_hmt_config", None) is not None:
        raise ValueError("attach_hmt: this model already has HMT attached")
    base = _base(model)
    get_family(getattr(base.config, "model_type", None), where="attach_hmt")
    if base.get_output_embeddings() is None:
        raise ValueError(f"attach_hmt: {type(base).__name__} has no output embeddings (a causal LM head)")
    d = base.config.hidden_size
    ref = base.get_input_embeddings().weight
    std = float(ref.detach().float().std())
    if config.freeze_base and not _is_peft(model):  # (PEFT has frozen all but its adapters already)
        for param in model.parameters():
            param.requires_grad_(False)
    hmt = HMTMemory(d, config.recall_hidden_size or d, std=std, dtype=ref.dtype, device=ref.device)
    model.add_module("hmt", hmt)
    model._hmt_config = config
    model.forward = types.MethodType(hmt_forward, model)
    model.generate = types.MethodType(hmt_generate, model)
    from .saving import save_hmt

    model.save_pretrained = types.MethodType(save_hmt, model)
    return model


def set_hmt_stage(model, recall: bool) -> HMTConfig:
    """Switch between stage 1 (``recall=False``: memory without recall) and stage 2 (with recall)."""
    model._hmt_config = dataclasses.replace(_hmt_config(model), recall=recall)
    return model._hmt_config


def hmt_parameters(model):
    """HMT's own parameters (what stage 1/2 training updates when the base is frozen)."""
    return list(model.hmt.parameters())
