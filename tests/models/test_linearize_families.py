"""Linearizing every supported decoder family (Llama 3 RoPE scaling, Mistral, Qwen2, Qwen3, Phi-3) and hybrid layouts.

Each teacher is a tiny random model built with transformers' own config and model classes, O(1) weights. The
exactness tests run in fp64 so that any difference (RoPE variant, biases, q/k norms, fused projections, GQA, MLP)
shows far above rounding.
"""

import math

import pytest
import tiny_llama
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

import hf_seqmodels  # noqa: F401  (registers the architectures)
from hf_seqmodels.cache import RecurrentCache
from hf_seqmodels.layers.families import FAMILIES
from hf_seqmodels.layers.liger import LigerAttention
from hf_seqmodels.layers.linearized import SoftmaxAttention
from hf_seqmodels.linearize import add_lora, attention_transfer, linearize
from hf_seqmodels.models.liger import LigerConfig, LigerForCausalLM
from hf_seqmodels.models.lizard import LizardForCausalLM

VOCAB = 96
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=6,
    num_key_value_heads=2,
    initializer_range=0.2,
    tie_word_embeddings=False,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def llama3():
    from transformers import LlamaConfig, LlamaForCausalLM

    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    }  # short: the scaling acts at these T
    return LlamaForCausalLM(LlamaConfig(**COMMON, rope_parameters=rope, attention_bias=True, mlp_bias=True))


def mistral(sliding_window=None):
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(MistralConfig(**COMMON, sliding_window=sliding_window))


def qwen2(**extra):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(**{**COMMON, **extra}))


def qwen3():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return Qwen3ForCausalLM(Qwen3Config(**COMMON, head_dim=12))  # explicit head_dim != hidden / heads


def phi3():
    from transformers import Phi3Config, Phi3ForCausalLM

    rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    return Phi3ForCausalLM(Phi3Config(**COMMON, rope_parameters=rope))


TEACHERS = {"llama3": llama3, "mistral": mistral, "qwen2": qwen2, "qwen3": qwen3, "phi3": phi3}


def teacher(name):
    model = TEACHERS[name]().eval()
    for n, p in model.named_parameters():  # O(1) norm weights and biases, so every term matters
        if p.dim() == 1:
            with torch.no_grad():
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "norm" in n else 0.0))
    return model


def left_padded(B, T, pad=(4, 0)):
    return tiny_llama.left_padded(B, T, VOCAB, pad)


def assert_rows_close(got, ref, mask, tol):
    """Logits compared at the real (unpadded) positions only."""
    for b in range(got.shape[0]):
        keep = mask[b].bool()
        torch.testing.assert_close(got[b, keep], ref[b, keep], rtol=tol, atol=tol)


def decode_in_pieces(model, ids, mask, pieces):
    cache = RecurrentCache(model.config.num_hidden_layers)
    return tiny_llama.decode_in_pieces(model, ids, mask, pieces, cache), cache


@pytest.mark.parametrize("name", sorted(TEACHERS))
def test_strict_load_under_the_teachers_names(name):
    t = teacher(name)
    model = linearize(t, "liger")
    assert model.config.base_model_type == t.config.model_type
    assert sorted(model.state_dict()) == sorted(t.state_dict())  # Liger adds no parameters
    for key, value in t.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    fresh = LigerForCausalLM(model.config)
    assert str(fresh.load_state_dict(t.state_dict(), strict=True)) == "<All keys matched successfully>"
    family = FAMILIES[t.config.model_type]
    attn = model.model.layers[0].self_attn
    assert hasattr(attn, "qkv_proj") == family.fused_qkv and hasattr(attn, "q_norm") == family.qk_norm


@pytest.mark.parametrize("name", sorted(TEACHERS))
def test_window_only_with_long_window_reproduces_the_teacher(name):
    t = teacher(name).double()
    T = 23
    ids, mask = left_padded(2, T)
    model = linearize(t, "liger", gla_weight=0.0, window_size=T + 3)
    hybrid = linearize(t, "liger", gla_weight=0.0, window_size=T + 3, softmax_layers=[1])
    all_softmax = linearize(t, "liger", softmax_layers=[0, 1, 2])  # every layer the teacher's own attention
    with torch.no_grad():
        ref = t(ids, attention_mask=mask).logits
        assert ref.abs().max() > 1  # O(1) logits: a real comparison
        for m in (model, hybrid, all_softmax):
            assert_rows_close(m(ids, attention_mask=mask).logits, ref, mask, 1e-9)
        torch.testing.assert_close(model(ids).logits, t(ids).logits, rtol=1e-9, atol=1e-9)
        short = linearize(t, "liger", gla_weight=0.0, window_size=4)
        assert (short(ids).logits - t(ids).logits)[:, 4:].abs().max() > 1e-3  # the window is not a no-op


@pytest.mark.parametrize("name", sorted(TEACHERS))
@pytest.mark.parametrize("softmax_layers", [[], [1]])
def test_cached_decoding_equals_full_forward(name, softmax_layers):
    model = linearize(teacher(name).double(), "liger", window_size=5, softmax_layers=softmax_layers)
    ids, mask = left_padded(2, 19, pad=(5, 0))
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        stepped, cache = decode_in_pieces(model, ids, mask, [7, 1, 1, 4, 1, 1, 1, 3])
        one_by_one, _ = decode_in_pieces(model, ids, mask, [1] * 19)
    for got in (stepped, one_by_one):
        assert_rows_close(got, full, mask, 1e-10)
    for i in range(3):
        names = set(cache.states[i])
        if i in softmax_layers:  # the teacher's global attention keeps every key
            assert names == {"kv_k", "kv_v", "kv_mask"} and cache.get(i, "kv_k").shape == (
                2,
                2,
                19,
                model.config.head_dim,
            )
        else:
            assert names == {"gla_state", "swa_k", "swa_v", "swa_mask"}


@pytest.mark.parametrize("name", sorted(TEACHERS))
def test_save_reload_through_auto_classes(name, tmp_path):
    model = linearize(teacher(name), "liger", window_size=6, softmax_layers=[2], base_model="org/tiny")
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is LigerForCausalLM
    assert loaded.config.base_model_type == FAMILIES[model.config.base_model_type].model_type
    assert loaded.config.base_config == model.config.base_config and loaded.config.softmax_layers == [2]
    assert isinstance(loaded.model.layers[2].self_attn, SoftmaxAttention)
    assert isinstance(loaded.model.layers[0].self_attn, LigerAttention)
    ids = torch.randint(0, VOCAB, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(TEACHERS))
def test_lora_on_the_familys_targets_merges_exactly(name):
    model = linearize(teacher(name), "liger", window_size=4, softmax_layers=[0]).double()
    peft_model = add_lora(model, r=4)
    targets = {n.split(".lora_")[0].split(".")[-1] for n, p in peft_model.named_parameters() if p.requires_grad}
    assert targets == set(FAMILIES[model.config.base_model_type].lora_targets)
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:
            with torch.no_grad():
                p.normal_()  # B starts at zero: make the adapters matter
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        unmerged = peft_model(input_ids=ids).logits
        base = peft_model.get_base_model()
        with peft_model.disable_adapter():
            plain = peft_model(input_ids=ids).logits
        merged = peft_model.merge_and_unload()(input_ids=ids).logits
    assert (unmerged - plain).abs().max() > 1e-3
    torch.testing.assert_close(merged, unmerged, rtol=1e-10, atol=1e-10)
    assert type(base) is LigerForCausalLM


def _rms(x, weight, eps):
    return weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def linear_branch_from_teacher(attn, x, config, normalizer=16.0):
    """Liger's linear branch on one row ``x [T, d]`` from the TEACHER's attention weights, fp64, a token loop:
    q, k, v as the teacher projects them (biases, fused qkv split, Qwen3's per-head RMSNorm on q and k),
    ``S_t = diag(exp(g_t)) S_{t-1} + phi(k_t)^T v_t``, ``o_t = scale * phi(q_t) S_t`` with ``phi`` a softmax over
    the head dimension and ``g = logsigmoid(k) / normalizer``, heads shared H / Hkv, then the teacher's o_proj."""
    x = x.double()
    T = x.shape[0]
    H, Hkv = config.num_attention_heads, config.num_key_value_heads
    D = getattr(config, "head_dim", None) or config.hidden_size // H

    def lin(m):
        return x @ m.weight.double().T + (0 if m.bias is None else m.bias.double())

    if hasattr(attn, "qkv_proj"):
        qkv = lin(attn.qkv_proj)
        q, k, v = qkv[:, : H * D], qkv[:, H * D : (H + Hkv) * D], qkv[:, (H + Hkv) * D :]
    else:
        q, k, v = lin(attn.q_proj), lin(attn.k_proj), lin(attn.v_proj)
    q, k, v = q.view(T, H, D), k.view(T, Hkv, D), v.view(T, Hkv, D)
    if hasattr(attn, "q_norm"):
        q = _rms(q, attn.q_norm.weight.double(), config.rms_norm_eps)
        k = _rms(k, attn.k_norm.weight.double(), config.rms_norm_eps)
    group = H // Hkv
    out = torch.zeros(T, H, D, dtype=torch.float64)
    for h in range(H):
        S = torch.zeros(D, D, dtype=torch.float64)
        for t in range(T):
            kt = k[t, h // group]
            S = torch.diag(torch.exp(F.logsigmoid(kt) / normalizer)) @ S + torch.outer(kt.softmax(-1), v[t, h // group])
            out[t, h] = q[t, h].softmax(-1) @ S / math.sqrt(D)
    o = out.reshape(T, H * D)
    return o @ attn.o_proj.weight.double().T + (0 if attn.o_proj.bias is None else attn.o_proj.bias.double())


@pytest.mark.parametrize("name", sorted(TEACHERS))
def test_linear_branch_against_a_reference_from_the_teachers_weights(name):
    t = teacher(name)
    model = linearize(t, "liger", gla_weight=1.0).double()
    x = torch.randn(2, 13, t.config.hidden_size, dtype=torch.float64)
    # transformers' RMSNorm (Qwen3's q/k norms) computes in fp32 even for fp64 inputs, in the teacher as here
    tol = 1e-6 if FAMILIES[name if name in FAMILIES else "llama"].qk_norm else 1e-9
    for i in (0, 2):
        with torch.no_grad():
            got = model.model.layers[i].self_attn(x)
        for b in range(2):
            ref = linear_branch_from_teacher(t.model.layers[i].self_attn, x[b], t.config)
            assert ref.abs().max() > 0.1
            torch.testing.assert_close(got[b], ref, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "builder,expected",
    [
        (lambda: mistral(sliding_window=5), [5, 5, 5]),
        (lambda: qwen2(use_sliding_window=True, sliding_window=5, max_window_layers=1), [None, 5, 5]),
    ],
)
def test_softmax_layers_keep_the_teachers_own_sliding_window(builder, expected):
    t = builder().eval().double()
    model = linearize(t, "liger", softmax_layers=[0, 1, 2])
    assert [layer.self_attn.teacher_window for layer in model.model.layers] == expected
    ids, mask = left_padded(2, 17, pad=(3, 0))
    with torch.no_grad():
        ref = t(ids, attention_mask=mask).logits
        assert_rows_close(model(ids, attention_mask=mask).logits, ref, mask, 1e-9)
        stepped, cache = decode_in_pieces(model, ids, mask, [6, 1, 1, 1, 8])
    assert_rows_close(stepped, ref, mask, 1e-9)
    assert cache.get(1, "swa_k").shape[2] == 5  # a windowed teacher layer keeps only its window


def test_hybrid_decode_memory_grows_only_in_softmax_layers():
    model = linearize(teacher("qwen2"), "liger", window_size=4, softmax_every=2)
    assert model.config.softmax_layers == [1]
    sizes = []
    for T in (8, 16):
        cache = RecurrentCache(3)
        with torch.no_grad():
            model(torch.randint(0, VOCAB, (1, T)), cache=cache, use_cache=True)
        sizes.append([cache.nbytes(i) for i in range(3)])
    assert sizes[0][0] == sizes[1][0] and sizes[0][2] == sizes[1][2]  # linear layers: constant
    per_token = 2 * 2 * model.config.head_dim * 4  # k and v, 2 KV heads, fp32 (+ 1 byte of mask)
    assert sizes[1][1] - sizes[0][1] == 8 * (per_token + 1)


def test_lizard_hybrid_transfers_and_decodes():
    t = teacher("qwen3")
    model = linearize(t, "lizard", window_size=4, softmax_layers=[1])
    assert isinstance(model, LizardForCausalLM) and isinstance(model.model.layers[1].self_attn, SoftmaxAttention)
    losses = attention_transfer(model, torch.randint(0, VOCAB, (4, 12)), steps=2, batch_size=2, progress=False)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    model = model.double()
    ids, mask = left_padded(2, 11, pad=(2, 0))
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        stepped, _ = decode_in_pieces(model, ids, mask, [4, 1, 1, 5])
    assert_rows_close(stepped, full, mask, 1e-10)


def test_unsupported_families_and_bad_layouts_are_named():
    from transformers import GemmaConfig, GemmaForCausalLM

    gemma = GemmaForCausalLM(
        GemmaConfig(
            vocab_size=VOCAB,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
        )
    )
    with pytest.raises(ValueError, match=r"Llama-shaped decoder.*GemmaForCausalLM.*'gemma'"):
        linearize(gemma, "liger")
    with pytest.raises(
        ValueError,
        match=r"'gemma' is not a supported decoder family; supported: \['llama', 'mistral', 'phi3', 'qwen2', 'qwen3'\]",
    ):
        LigerConfig(base_model_type="gemma")
    t = teacher("mistral")
    with pytest.raises(ValueError, match=r"softmax_layers must hold layer indices in \[0, 3\).*\[3\]"):
        linearize(t, "liger", softmax_layers=[0, 3])
    with pytest.raises(ValueError, match="repeated"):
        linearize(t, "liger", softmax_layers=[1, 1])
    with pytest.raises(TypeError, match="softmax_layers must be a list"):
        linearize(t, "liger", softmax_layers=2)
    with pytest.raises(ValueError, match="not both"):
        linearize(t, "liger", softmax_layers=[1], softmax_every=2)
    with pytest.raises(ValueError, match="softmax_every must be an int >= 1, got 0"):
        linearize(t, "liger", softmax_every=0)


def test_command_line_hybrid_phi3(tmp_path, capsys):
    import argparse

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from hf_seqmodels.commands.linearize import add_parser

    text = " ".join(f"word{i % 37} and the {i % 11} of" for i in range(400))
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator([text], trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    teacher("phi3").save_pretrained(tmp_path / "phi3")
    tokenizer.save_pretrained(tmp_path / "phi3")
    (tmp_path / "train.txt").write_text(text)
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    base = [
        "linearize",
        "--model",
        str(tmp_path / "phi3"),
        "--method",
        "liger",
        "--train-text",
        str(tmp_path / "train.txt"),
        "--steps",
        "1",
        "--seq-len",
        "16",
        "--window",
        "4",
        "--no-progress",
    ]

    def run(*extra, out="out"):
        args = parser.parse_args(base + ["--out", str(tmp_path / out), *extra])
        return args.func(args)

    with pytest.raises(ValueError, match=r"--softmax-layers.*\[0, 3\).*\[5\]"):
        run("--softmax-layers", "1,5")  # checked from config.json, before the weights load
    with pytest.raises(
        ValueError, match=r"\['q_proj'\] is not a linear layer of a liger model converted from a 'phi3'"
    ):
        run("--lora-targets", "q_proj")
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--out", "x", "--softmax-every", "2", "--softmax-layers", "1"])
    assert run("--softmax-every", "2") == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.config.base_model_type == "phi3" and model.config.softmax_layers == [1]
    assert isinstance(model.model.layers[1].self_attn, SoftmaxAttention)
    assert "r=8 on qkv_proj" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize("name", ["phi3", "qwen3"])
def test_peft_default_targets_follow_the_family(name):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    model = get_peft_model(linearize(teacher(name), "liger"), LoraConfig(r=2, task_type="CAUSAL_LM"))
    wrapped = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert wrapped == set(FAMILIES[name].lora_targets)


def test_softmax_layers_without_sdpa_gqa_compute_the_same(monkeypatch):
    """torch < 2.5 has no ``enable_gqa``: the softmax layers then expand the key/value heads themselves."""
    import hf_seqmodels.layers.linearized as linearized

    model = linearize(teacher("qwen3").double(), "liger", softmax_layers=[0, 1, 2])
    ids, mask = left_padded(2, 9, pad=(2, 0))
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        stepped, _ = decode_in_pieces(model, ids, mask, [5, 1, 1, 1, 1])
        monkeypatch.setattr(linearized, "_SDPA_GQA", False)
        assert_rows_close(model(ids, attention_mask=mask).logits, ref, mask, 1e-12)
        assert_rows_close(decode_in_pieces(model, ids, mask, [5, 1, 1, 1, 1])[0], stepped, mask, 1e-12)


def test_hybrid_generate_with_cache_equals_without():
    model = linearize(teacher("mistral"), "liger", window_size=3, softmax_layers=[1])
    ids, mask = left_padded(2, 6, pad=(2, 0))
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, use_cache=True, **kw), model.generate(ids, use_cache=False, **kw))
