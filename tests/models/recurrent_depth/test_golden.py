"""Our recurrent-depth model against golden outputs of the reference Huginn file itself (tests/fixtures/huginn: a tiny
random 2/4/2 model saved by the reference's ``save_pretrained``, made with transformers 4.56.2; see its README).

The folder is a published-style Huginn checkpoint (``model_type "huginn_raven"``, the reference's key names, the
``freqs_cis`` buffer, no ``lm_head.weight``): loading it through the Auto classes without remote code is part of what
is checked."""

import pytest
import torch
import torch.nn.functional as F
from golden import forward_case, generation_run, load_golden
from transformers import AutoConfig, AutoModelForCausalLM

import hf_seqmodels  # noqa: F401  (registers huginn_raven)
from hf_seqmodels.compat import CACHE_KWARG
from hf_seqmodels.models.recurrent_depth import RecurrentDepthForCausalLM

FOLDER, META, TENSORS = load_golden()
TOL = 1e-5


@pytest.fixture(scope="module")
def model():
    model = AutoModelForCausalLM.from_pretrained(FOLDER)
    assert isinstance(model, RecurrentDepthForCausalLM)
    assert AutoConfig.from_pretrained(FOLDER).model_type == "huginn_raven"
    return model.eval()


def close(got, want, tol=TOL):
    err = (got.double() - want.double()).abs().max().item()
    assert err <= tol * max(1.0, want.abs().max().item()), f"max error {err:.3g}"


@pytest.mark.parametrize("name", [n for n, c in META["forward"].items() if not c.get("labels")])
def test_forward_equals_reference(model, name):
    case = forward_case(META, TENSORS, name)
    positions = case["position_ids"]
    with torch.no_grad():
        out = model(
            input_ids=case["input_ids"],
            input_states=case["input_states"],
            num_steps=case["num_steps"],
            init_scale=case["init_scale"],
            position_ids=None if positions is None else torch.tensor([positions]).expand(len(case["input_ids"]), -1),
            use_cache=False,
        )
    close(out.logits, case["outputs"]["logits"])
    close(out.latent_states, case["outputs"]["latent_states"])


def test_loss_and_gradients_equal_reference(model):
    """The reference's loss takes its labels as they are (no shift inside, unlike transformers' ``labels=``): the
    same cross-entropy on our logits, and the gradients of five weights across the model (the tied embedding too)."""
    (name,) = [n for n, c in META["forward"].items() if c.get("labels")]
    case = forward_case(META, TENSORS, name)
    model.zero_grad(set_to_none=True)
    model.train()  # the reference's (no_grad, grad) split is honoured in either mode; train() as the reference ran
    try:
        logits = model(
            input_ids=case["input_ids"], input_states=case["input_states"], num_steps=case["num_steps"]
        ).logits
        loss = F.cross_entropy(logits.flatten(0, 1), case["labels"].flatten(), ignore_index=-100)
        loss.backward()
    finally:
        model.eval()
    close(loss.detach(), case["outputs"]["loss"])
    params = dict(model.named_parameters())
    for weight in META["forward"][name]["grads"]:
        key = "transformer.wte.weight" if weight == "lm_head.weight" else weight
        close(params[key].grad, case["outputs"][f"grad.{weight}"])
    model.zero_grad(set_to_none=True)


def _greedy_replay(model, prompt, num_steps, draws, cache):
    """Greedy decoding whose every forward starts from the reference's recorded initial latent."""
    seq = prompt
    with torch.no_grad():
        out = model(
            input_ids=prompt, input_states=draws[0], num_steps=num_steps, use_cache=True, **{CACHE_KWARG: cache}
        )
        for draw in draws[1:] + [None]:
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, token], 1)
            if draw is None:
                break
            out = model(
                input_ids=token, input_states=draw, num_steps=num_steps, **{CACHE_KWARG: getattr(out, CACHE_KWARG)}
            )
    return seq


@pytest.mark.parametrize(
    "name", ["minimal_steps_3_random_init", "minimal_steps_3_zero_init", "minimal_steps_3_zero_init_compress_s4"]
)
def test_greedy_decoding_equals_reference(model, name):
    run, want, draws = generation_run(META, TENSORS, name)
    prompt = TENSORS[run["input_ids"]]
    slots = 4 if run.get("cache_lookup_strategy") == "compress-s4" else None
    got = _greedy_replay(model, prompt, run["num_steps"], draws, model.new_cache(core_slots=slots))
    assert torch.equal(got, want), (got, want)
    if run["init_scale"] == 0:  # deterministic: generate() itself must give the same tokens
        out = model.generate(
            prompt,
            max_new_tokens=run["max_new_tokens"],
            do_sample=False,
            num_steps=run["num_steps"],
            init_scale=0.0,
            **{CACHE_KWARG: model.new_cache(core_slots=slots)},
        )
        assert torch.equal(out, want), (out, want)


@pytest.mark.parametrize("name", ["minimal_steps_3_random_init", "minimal_steps_3_continuous"])
def test_seeded_generate_equals_reference(model, name):
    """The latent init draws exactly as the reference's (same generator calls): after the reference's
    ``torch.manual_seed``, generate() gives its tokens, with fresh latents per token and with continuous compute
    (each token starts from the previous token's ``ln_f``-ed latent, as the reference's generate_minimal)."""
    run, want, _ = generation_run(META, TENSORS, name)
    torch.manual_seed(run["torch_manual_seed"])
    out = model.generate(
        TENSORS[run["input_ids"]],
        max_new_tokens=run["max_new_tokens"],
        do_sample=False,
        num_steps=run["num_steps"],
        continuous_compute=run["continuous_compute"],
    )
    assert torch.equal(out, want), (out, want)
