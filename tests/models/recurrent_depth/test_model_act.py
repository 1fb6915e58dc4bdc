"""ACT (``config.act_threshold``) wired into the recurrent-depth model: the forward equals the t2t halting rule applied
position by position (a scalar fp64 loop here) to the core states that ``iterate_one_step`` produces, the loss adds
``act_loss_weight`` times the mean ponder cost, gradients reach the halting unit, padding halts from the start, and a
KV cache is refused by name."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_seqmodels.models.recurrent_depth import RecurrentDepthConfig, RecurrentDepthForCausalLM


def make_model(threshold=0.9, max_steps=6):
    config = RecurrentDepthConfig(
        vocab_size=37,
        n_embd=16,
        n_heads=2,
        intermediate_size=24,
        mean_recurrence=max_steps,
        mean_backprop_depth=2,
        act_threshold=threshold,
        act_loss_weight=0.3,
    )
    model = RecurrentDepthForCausalLM(config).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn_like(p) / math.sqrt(p.shape[-1] if p.dim() > 1 else 1)
            p.add_(3 * noise if "act_halting" in name else noise)  # O(1) halting logits: a mix of halting steps
    return model.eval()


def halting_loop(states, w, b, threshold, max_steps):
    """t2t's universal_transformer_act for one position, from its states s_0 .. s_max (s_n: the state fed to step
    n): returns (output, ponder cost)."""
    h = rem = 0.0
    n_updates = 0
    y = torch.zeros_like(states[0])
    for n in range(max_steps):
        if not (h < threshold and n_updates < max_steps):
            break
        p = torch.sigmoid(states[n] @ w + b).item()
        if h + p > threshold:  # halts here: takes the remainder
            rem = 1 - h
            u, h = rem, 1.0
        else:
            u, h = p, h + p
        n_updates += 1
        y = u * states[n + 1] + (1 - u) * y
    return y, n_updates + rem


@pytest.mark.parametrize("length,threshold", [(1, 0.9), (7, 0.9), (6, 0.5), (5, 0.999)])
def test_forward_loss_and_ponder_cost_equal_the_halting_loop(length, threshold):
    max_steps = 6
    model = make_model(threshold, max_steps)
    ids = torch.randint(0, 37, (2, length))
    labels = torch.randint(0, 37, (2, length))
    state0 = torch.randn(2, length, 16, dtype=torch.float64)
    out = model(input_ids=ids, input_states=state0, labels=labels, num_steps=max_steps, use_cache=False)

    with torch.no_grad():
        embeds = model.embed_inputs(ids)
        states = [state0]
        for n in range(max_steps):  # every position keeps being computed (t2t), halted or not
            states.append(model.iterate_one_step(embeds, states[-1], step=n))
        halting = model.transformer.act_halting.proj
        w, b = halting.weight[0].double(), halting.bias[0].double()
        y = torch.empty_like(state0)
        cost = torch.empty(2, length, dtype=torch.float64)
        for i in range(2):
            for t in range(length):
                y[i, t], cost[i, t] = halting_loop([s[i, t] for s in states], w, b, threshold, max_steps)
        logits = model.predict_from_latents(y)
    assert 1 <= cost.min() and cost.max() <= max_steps + 1
    torch.testing.assert_close(out.ponder_cost.double(), cost, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.logits, logits, rtol=1e-9, atol=1e-9)
    if length > 1:  # one token: no next-token label (transformers' loss is nan there, ponder cost or not)
        want = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()) + 0.3 * cost.mean()
        torch.testing.assert_close(out.loss.double(), want, rtol=1e-6, atol=0)  # transformers' loss runs in fp32


def test_halting_mix_and_gradients_reach_the_halting_unit():
    for _ in range(20):  # weights and inputs whose positions halt at different steps (most draws)
        model = make_model(0.9, 6).train()
        ids = torch.randint(0, 37, (3, 9))
        out = model(input_ids=ids, labels=ids, num_steps=6, use_cache=False)
        steps = out.ponder_cost.floor()
        if steps.min() < steps.max():
            break
    assert steps.min() < steps.max(), "20 draws without a mix of halting steps"
    out.loss.backward()
    halting = model.transformer.act_halting.proj
    assert halting.weight.grad.abs().max() > 0 and halting.bias.grad.abs() > 0
    assert model.transformer.core_block[0].attn.Wqkv.weight.grad.abs().max() > 0


def test_padding_halts_from_the_start_and_rows_equal_alone():
    model = make_model(0.9, 5)
    ids = torch.randint(0, 37, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, :3] = 0
    state0 = torch.randn(2, 8, 16, dtype=torch.float64)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, input_states=state0, num_steps=5, use_cache=False)
        alone = model(input_ids=ids[1:, 3:], input_states=state0[1:, 3:], num_steps=5, use_cache=False)
    assert (out.ponder_cost[1, :3] == 0).all()
    torch.testing.assert_close(out.logits[1, 3:], alone.logits[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.ponder_cost[1, 3:], alone.ponder_cost[0], rtol=1e-12, atol=1e-12)


def test_act_refuses_a_cache_and_generates_without_one():
    model = make_model(0.9, 4)
    ids = torch.randint(0, 37, (1, 5))
    with pytest.raises(ValueError, match="act_threshold.*use_cache=False"):
        model(input_ids=ids, use_cache=True)
    with pytest.raises(ValueError, match="act_threshold.*use_cache=False"):
        model.generate(ids, max_new_tokens=2, do_sample=False)
    out = model.generate(ids, max_new_tokens=3, do_sample=False, use_cache=False, init_scale=0.0)
    assert out.shape == (1, 8)
    halting = model.transformer.act_halting
    fresh = RecurrentDepthForCausalLM(model.config).transformer.act_halting
    assert fresh.proj.bias.item() == 1.0  # t2t's halting bias init survives the model's _init_weights
    assert halting.threshold == 0.9


def test_act_threshold_is_checked():
    with pytest.raises(ValueError, match="act_threshold"):
        RecurrentDepthConfig(act_threshold=1.5)
    with pytest.raises(ValueError, match="act_loss_weight"):
        RecurrentDepthConfig(act_threshold=0.9, act_loss_weight=-1)
