"""ACT halting (hf_seqmodels.models.recurrent_depth.act) against an independent per-position loop written from
tensor2tensor's ``universal_transformer_act`` semantics (act_type "basic"): fp64, scalar Python control flow per
position, forward values, ponder statistics and gradients."""

import math

import pytest
import torch
from torch import nn

from hf_seqmodels.models.recurrent_depth.act import ACTHalting, act_recurrence

HIDDEN = 5
MAX_STEPS = 6


class StepFn(nn.Module):
    """A small recurrent core with O(1) parameters: ``tanh(W s + b + step * c [+ A causal_mean(s)])``. With
    ``mix`` it mixes positions (a causal running mean over the length), so a halted position still feeds the others."""

    def __init__(self, hidden, mix, generator):
        super().__init__()
        self.mix = mix
        g = generator
        self.W = nn.Parameter(1.5 * torch.randn(hidden, hidden, generator=g, dtype=torch.float64) / math.sqrt(hidden))
        self.b = nn.Parameter(torch.randn(hidden, generator=g, dtype=torch.float64))
        self.c = nn.Parameter(0.5 * torch.randn(hidden, generator=g, dtype=torch.float64))
        self.A = nn.Parameter(torch.randn(hidden, hidden, generator=g, dtype=torch.float64) / math.sqrt(hidden))
        self.calls = 0

    def forward(self, s, step):
        self.calls += 1
        z = s @ self.W.T + self.b + step * self.c
        if self.mix:
            counts = torch.arange(1, s.shape[-2] + 1, dtype=s.dtype).unsqueeze(-1)
            z = z + (s.cumsum(-2) / counts) @ self.A.T
        return torch.tanh(z)


def reference_act(states, w, bias, threshold, max_steps, mask):
    """``states[n]`` is the state fed to step ``n`` (``states[n + 1]`` its output), ``[B, T, H]``: the trajectory
    does not depend on halting (t2t keeps computing halted positions). Per position: accumulate the halting
    probabilities until adding the next one would exceed the threshold; that step gets the remainder
    ``1 - (sum so far)`` as its weight, earlier steps their own probability; the output is the recursive blend
    ``y = u * s_{n+1} + (1 - u) * y`` from ``y = 0``; a position that never crosses stops after ``max_steps`` with
    remainder 0. Padded positions: output 0, no updates."""
    B, T, H = states[0].shape
    ys, rs, ns = [], [], []
    for bi in range(B):
        for t in range(T):
            y = torch.zeros(H, dtype=torch.float64)
            r = torch.zeros((), dtype=torch.float64)
            n = 0
            if mask is None or bool(mask[bi][t]):
                total = torch.zeros((), dtype=torch.float64)
                for k in range(max_steps):
                    s = states[k][bi, t]
                    logit = bias
                    for i in range(H):
                        logit = logit + w[i] * s[i]
                    p = 1.0 / (1.0 + torch.exp(-logit))
                    n += 1
                    if float((total + p).detach()) > threshold:
                        r = 1.0 - total
                        y = r * states[k + 1][bi, t] + (1.0 - r) * y
                        break
                    total = total + p
                    y = p * states[k + 1][bi, t] + (1.0 - p) * y
            ys.append(y)
            rs.append(r)
            ns.append(float(n))
    state = torch.stack(ys).view(B, T, H)
    remainders = torch.stack(rs).view(B, T)
    n_updates = torch.tensor(ns, dtype=torch.float64).view(B, T)
    ponder = n_updates + remainders
    n_valid = B * T if mask is None else int(mask.sum())
    return state, remainders, n_updates, ponder, ponder.sum() / n_valid


# halting unit settings: (weight scale, bias) giving all-halt-at-step-1, never-halt, and a mixture
REGIMES = {"first": (0.05, 8.0), "never": (0.05, -8.0), "mixed": (1.2, -0.3)}


def make_case(regime, threshold, batch, length, mix, padding, seed):
    g = torch.Generator().manual_seed(seed)
    step = StepFn(HIDDEN, mix, g)
    halting = ACTHalting(HIDDEN, threshold=threshold).double()
    scale, bias = REGIMES[regime]
    with torch.no_grad():
        halting.proj.weight.copy_(scale * torch.randn(1, HIDDEN, generator=g, dtype=torch.float64))
        halting.proj.bias.fill_(bias)
    x = torch.randn(batch, length, HIDDEN, generator=g, dtype=torch.float64).requires_grad_()
    mask = None
    if padding:
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[0, : length // 2] = 0  # left padding
        if batch > 1:
            mask[1, length - 1 - length // 3 :] = 0  # right padding
    return step, halting, x, mask, g


@pytest.mark.parametrize(
    "regime,threshold,batch,length,mix,padding",
    [
        ("first", 0.99, 2, 7, False, False),
        ("never", 0.99, 2, 7, False, True),
        ("mixed", 0.99, 3, 7, False, False),
        ("mixed", 0.99, 3, 7, False, True),
        ("mixed", 0.99, 3, 9, True, True),
        ("mixed", 0.5, 3, 5, True, False),
        ("mixed", 1.0, 2, 11, True, True),
        ("mixed", 0.99, 3, 1, False, False),
        ("first", 0.99, 2, 1, True, False),
    ],
)
def test_act_matches_reference_loop(regime, threshold, batch, length, mix, padding):
    step, halting, x, mask, g = make_case(regime, threshold, batch, length, mix, padding, seed=7 + length + batch)
    out = act_recurrence(step, x, halting, MAX_STEPS, attention_mask=mask)
    num_calls = step.calls

    states = [x]
    for k in range(MAX_STEPS):
        states.append(step(states[-1], k))
    w, b = halting.proj.weight[0], halting.proj.bias[0]
    ref_state, ref_rem, ref_n, ref_ponder, ref_loss = reference_act(states, w, b, threshold, MAX_STEPS, mask)

    torch.testing.assert_close(out.state, ref_state, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.remainders, ref_rem, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.n_updates, ref_n, rtol=0, atol=0)
    torch.testing.assert_close(out.ponder_cost, ref_ponder, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.ponder_loss, ref_loss, rtol=1e-12, atol=1e-12)
    valid = torch.ones(batch, length, dtype=torch.bool) if mask is None else mask.bool()
    # the loop stops as soon as every position halted: as many step_fn calls as the most updates of a position
    assert num_calls == out.num_steps == int(ref_n.max())
    expected_h = torch.where(ref_rem > 0, 1.0, 0.0)
    assert torch.equal(out.halting_probability[~valid], torch.ones_like(out.halting_probability[~valid]))
    assert torch.equal(out.halting_probability[ref_rem > 0], expected_h[ref_rem > 0])

    # the regime is what its name says (so the case cannot pass vacuously)
    n_valid = ref_n[valid]
    if regime == "first":
        assert torch.equal(n_valid, torch.ones_like(n_valid)) and bool((ref_rem[valid] == 1).all())
    elif regime == "never":
        assert bool((n_valid == MAX_STEPS).all()) and bool((ref_rem == 0).all())
    elif length > 1:
        assert len(set(n_valid.tolist())) >= 2
    if padding:
        assert bool((out.state[~valid] == 0).all()) and bool((out.ponder_cost[~valid] == 0).all())

    # gradients w.r.t. the input, the step function's and the halting unit's parameters
    R = torch.randn(batch, length, HIDDEN, generator=g, dtype=torch.float64)
    R2 = torch.randn(batch, length, generator=g, dtype=torch.float64)
    params = [x, step.W, step.b, step.c, halting.proj.weight, halting.proj.bias] + ([step.A] if mix else [])

    def loss_of(state, remainders, ponder_loss):
        return (state * R).sum() + (remainders * R2).sum() + 0.7 * ponder_loss

    grads = torch.autograd.grad(loss_of(out.state, out.remainders, out.ponder_loss), params, allow_unused=True)
    ref_grads = torch.autograd.grad(loss_of(ref_state, ref_rem, ref_loss), params, allow_unused=True)
    for name, got, want in zip(["x", "W", "b", "c", "halt_w", "halt_b", "A"], grads, ref_grads):
        if want is None:
            assert got is None or bool((got == 0).all()), name
            continue
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=lambda m: f"grad {name}: {m}")
    if regime == "mixed":
        assert float(ref_grads[4].abs().sum()) > 0  # the halting unit gets a gradient


def test_halted_positions_keep_being_computed():
    """With a position-mixing core, t2t keeps applying the core to halted positions, whose states keep feeding the
    running ones. The mixing cases above check that against the reference; this checks that those cases can tell:
    a variant that freezes a position's state once it halted gives a different output."""
    step, halting, x, _, _ = make_case("mixed", 0.99, 3, 9, True, False, seed=3)
    with torch.no_grad():
        out = act_recurrence(step, x, halting, MAX_STEPS)
        assert bool((out.n_updates < MAX_STEPS).any()) and len(set(out.n_updates.flatten().tolist())) >= 2
        w, b = halting.proj.weight[0], halting.proj.bias[0]
        frozen = [x]
        for k in range(MAX_STEPS):
            halted = (out.n_updates <= k).unsqueeze(-1)
            frozen.append(torch.where(halted, frozen[-1], step(frozen[-1], k)))
        frozen_state = reference_act(frozen, w, b, 0.99, MAX_STEPS, None)[0]
    assert not torch.allclose(out.state, frozen_state, rtol=1e-6, atol=1e-6)


def test_act_halting_unit():
    halting = ACTHalting(7)
    assert halting.threshold == 0.99
    assert bool((halting.proj.bias == 1.0).all())
    bound = math.sqrt(6 / (7 + 1))  # Glorot uniform for a [1, 7] kernel
    assert float(halting.proj.weight.detach().abs().max()) <= bound
    s = torch.randn(2, 3, 7)
    p = halting(s)
    assert p.shape == (2, 3)
    torch.testing.assert_close(p, torch.sigmoid(s @ halting.proj.weight[0] + halting.proj.bias[0]))
    assert ACTHalting(4, threshold=0.5, bias_init=-2.0).proj.bias.detach().item() == -2.0


def test_all_padded_and_low_precision():
    halting = ACTHalting(HIDDEN)
    calls = []
    step = lambda s, k: calls.append(k) or torch.tanh(s + 1)
    s = torch.randn(2, 4, HIDDEN)
    out = act_recurrence(step, s, halting, 3, attention_mask=torch.zeros(2, 4))
    assert calls == [] and out.num_steps == 0 and bool((out.state == 0).all()) and float(out.ponder_loss) == 0

    out = act_recurrence(step, s.bfloat16(), halting.bfloat16(), 3)
    assert out.state.dtype == torch.bfloat16 and out.remainders.dtype == torch.float32
    assert calls == list(range(out.num_steps)) and out.num_steps >= 1


def test_act_bad_inputs():
    halting = ACTHalting(HIDDEN)
    step = lambda s, k: s
    s = torch.randn(2, 3, HIDDEN)
    with pytest.raises(ValueError, match="max_steps"):
        act_recurrence(step, s, halting, 0)
    with pytest.raises(TypeError, match="max_steps"):
        act_recurrence(step, s, halting, 2.0)
    with pytest.raises(ValueError, match="attention_mask"):
        act_recurrence(step, s, halting, 2, attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="hidden_size"):
        act_recurrence(step, torch.randn(2, 3, HIDDEN + 1), halting, 2)
    with pytest.raises(ValueError, match="step_fn"):
        act_recurrence(lambda s, k: s[..., :1], s, halting, 2)
    with pytest.raises(ValueError, match="state"):
        act_recurrence(step, torch.ones(2, 3, HIDDEN, dtype=torch.long), halting, 2)
    with pytest.raises(TypeError, match="halting"):
        act_recurrence(step, s, nn.Linear(HIDDEN, 1), 2)
    with pytest.raises(ValueError, match="threshold"):
        ACTHalting(HIDDEN, threshold=1.5)
    with pytest.raises(ValueError, match="threshold"):
        ACTHalting(HIDDEN, threshold=0.0)
