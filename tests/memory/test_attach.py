import pytest
import torch
import torch.nn.functional as F
from memory_helpers import MODELS, ByteTokenizer, corpus, ids_for, randomize_bank

from hf_seqmodels.memory import (
    MemoryBankConfig,
    attach_memory_bank,
    build_memory_index,
    detach_memory_bank,
    memory_disabled,
    use_memory_paths,
)

TEXTS = corpus(6)


@pytest.fixture(scope="module")
def index():
    return build_memory_index(TEXTS, levels=2, branching=3, embed_dim=64, progress=False)


def cfg(**kw):
    kw.setdefault("block_sizes", (5, 3))
    kw.setdefault("branching", 3)
    kw.setdefault("generic_memory_prob", 0.0)
    return MemoryBankConfig(**kw)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_untrained_bank_changes_nothing(arch, index):
    model = MODELS[arch]()
    ids = ids_for(TEXTS[:3])
    with torch.no_grad():
        before = model(ids).logits
        attach_memory_bank(model, cfg(), index, tokenizer=ByteTokenizer())
        after = model(ids).logits
        explicit = model(ids, memory_paths=index.route(TEXTS[:3])).logits
    assert torch.equal(before, after) and torch.equal(before, explicit)
    # the memory is really there: random down weights change the output
    randomize_bank(model)
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, before)


def manual_memory_logits(model, ids, layer, paths, bank_cfg):
    """Anchor run + the last layer's memory branch recomputed from the raw block tensors (no memory_ffn)."""
    captured = {}
    mlp = model.model.layers[layer].mlp
    h1 = mlp.register_forward_hook(lambda m, a, o: captured.update(x=a[0].detach()))
    h2 = model.model.layers[layer].register_forward_hook(
        lambda m, a, o: captured.update(out=(o[0] if isinstance(o, tuple) else o).detach())
    )
    with memory_disabled(model), torch.no_grad():
        model(ids)
    h1.remove(), h2.remove()
    x, out = captured["x"].double(), captured["out"].double()
    extra = torch.zeros_like(out)
    for b in range(ids.shape[0]):
        wg, wu, wd = [], [], []
        for l, s in enumerate(bank_cfg.block_sizes):
            c = int(paths[b, l])
            c = bank_cfg.clusters(l + 1) if c < 0 else c
            blk = model.memory_bank.blocks[f"layer{layer}"][f"level{l + 1}"][c].detach().double()
            wg.append(blk[0]), wu.append(blk[1]), wd.append(blk[2])
        wg, wu, wd = torch.cat(wg), torch.cat(wu), torch.cat(wd)
        extra[b] = (F.silu(x[b] @ wg.T) * (x[b] @ wu.T)) @ wd
    hidden = model.model.norm((out + extra).float())
    return model.lm_head(hidden)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_output_equals_independent_recomputation(arch, index):
    model = MODELS[arch]()
    last = model.config.num_hidden_layers - 1
    c = cfg(layers=[last])
    attach_memory_bank(model, c, index)
    randomize_bank(model, std=0.3)
    ids = ids_for(TEXTS[:4])
    paths = index.route(TEXTS[:4])
    paths[3] = -1  # one sample on the generic memory
    with torch.no_grad():
        got = model(ids, memory_paths=paths).logits
    ref = manual_memory_logits(model, ids, last, paths, c)
    assert (got - ref).abs().max() < 1e-4 * ref.abs().max()
    with torch.no_grad():
        assert not torch.allclose(got, model(ids, memory_paths=torch.zeros_like(paths)).logits, atol=1e-3)


def test_routing_from_text_equals_explicit_paths(index):
    model = MODELS["gla"]()
    tok = ByteTokenizer()
    attach_memory_bank(model, cfg(), index, tokenizer=tok)
    randomize_bank(model)
    texts = [TEXTS[0], TEXTS[7], TEXTS[20]]
    enc = tok(texts)
    with torch.no_grad():
        routed = model(**enc).logits
        explicit = model(**enc, memory_paths=index.route(texts)).logits
        with use_memory_paths(model, index.route(texts)):
            ctx = model(**enc).logits
    assert torch.equal(routed, explicit) and torch.equal(routed, ctx)


def test_generic_memory_in_training(index):
    model = MODELS["gla"]()
    attach_memory_bank(model, cfg(generic_memory_prob=1.0), index)
    randomize_bank(model)
    ids = ids_for(TEXTS[:2])
    paths = index.route(TEXTS[:2])
    with torch.no_grad():
        model.train()
        train_out = model(ids, memory_paths=paths).logits
        model.eval()
        generic = model(ids, memory_paths=torch.full_like(paths, -1)).logits
        fetched = model(ids, memory_paths=paths).logits
    assert torch.equal(train_out, generic) and not torch.allclose(generic, fetched)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_generate_reuses_prompt_blocks(arch, index):
    model = MODELS[arch]()
    tok = ByteTokenizer()
    attach_memory_bank(model, cfg(), index, tokenizer=tok)
    randomize_bank(model, std=0.3)
    prompt = tok([TEXTS[1][:12], TEXTS[13][:12]])["input_ids"]
    paths = index.route([TEXTS[1][:12], TEXTS[13][:12]])
    st = model._memory_state
    n0 = st.fetch_count
    out = model.generate(prompt, max_new_tokens=6, do_sample=False, memory_paths=paths)
    assert st.fetch_count == n0 + 1  # fetched at prefill only
    uncached = model.generate(prompt, max_new_tokens=6, do_sample=False, memory_paths=paths, use_cache=False)
    routed = model.generate(prompt, max_new_tokens=6, do_sample=False)  # the prompt routed by the index
    assert torch.equal(out, uncached) and torch.equal(out, routed)
    # manual greedy loop: full forward each step with the prompt's paths
    seq = prompt
    with torch.no_grad():
        for _ in range(6):
            nxt = model(seq, memory_paths=paths, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)
    with torch.no_grad(), memory_disabled(model):
        plain = model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert not torch.equal(plain, out)


def test_bad_paths_and_mismatches(index):
    model = MODELS["gla"]()
    attach_memory_bank(model, cfg(), index)
    ids = ids_for(TEXTS[:2])
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        model(ids, memory_paths=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"level 2 ids must be in \[0, 9\)"):
        model(ids, memory_paths=torch.tensor([[0, 9], [0, 0]]))
    with pytest.raises(ValueError, match="3 rows but the batch has 2"):
        model(ids, memory_paths=torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="cannot route its input"):
        model(ids)
    with pytest.raises(ValueError, match="already has a memory bank"):
        attach_memory_bank(model, cfg(), index)
    other = MODELS["gla"]()
    with pytest.raises(ValueError, match="2 levels but block_sizes"):
        attach_memory_bank(other, cfg(block_sizes=(4, 2, 1)), index)
    with pytest.raises(ValueError, match="branching 3 but the config 4"):
        attach_memory_bank(other, cfg(branching=4), index)
    with pytest.raises(ValueError, match="expects embedder 'all-MiniLM-L6-v2'"):
        attach_memory_bank(other, cfg(embedder="all-MiniLM-L6-v2"), index)
    with pytest.raises(ValueError, match="out of range"):
        attach_memory_bank(other, cfg(layers=[5]), index)
    anchor_idx = build_memory_index(
        TEXTS[:6], levels=2, branching=3, model=MODELS["llama"](), tokenizer=ByteTokenizer(), progress=False
    )
    with pytest.raises(ValueError, match="anchor-meanpool:llama:48.*hf_seqmodels_gla:32"):
        attach_memory_bank(other, cfg(), anchor_idx)


def test_detach_restores_anchor(index):
    model = MODELS["gla"]()
    ids = ids_for(TEXTS[:2])
    with torch.no_grad():
        ref = model(ids).logits
    attach_memory_bank(model, cfg(), index)
    randomize_bank(model)
    detach_memory_bank(model)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)
    assert not any(n.startswith("memory_bank") for n, _ in model.named_parameters())
