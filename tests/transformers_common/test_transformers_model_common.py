"""Transformers' own generic model tests (``ModelTesterMixin``, ``ConfigTester``, ``TrainingTesterMixin``) on every
architecture.

Each test class gives upstream a tiny model tester, with the flags transformers' own recurrent models set (Mamba-2:
no attention outputs; stateful, so no cache cropping). A test that does not apply is skipped with the reason; a
failure that shows a bug in a model is fixed in the model, not skipped. The upstream test files come from the
transformers sdist (``make transformers-tests``); see ``transformers_upstream.py``.
"""

from __future__ import annotations

import unittest

import pytest
import torch
from transformers.models.auto import modeling_auto
from transformers_upstream import (
    GENERATION_MIXIN_IS_STUB,
    ConfigTester,
    GenerationTesterMixin,
    ModelTesterMixin,
    TrainingTesterMixin,
    ids_tensor,
)

import hf_seqmodels  # noqa: F401  (registers the architectures)
from hf_seqmodels import (
    AarenConfig,
    AarenForCausalLM,
    AarenModel,
    GAMConfig,
    GAMForCausalLM,
    GAMModel,
    GLAConfig,
    GLAForCausalLM,
    GLAModel,
    HNetConfig,
    HNetForCausalLM,
    HNetModel,
    LigerConfig,
    LigerForCausalLM,
    LigerModel,
    LizardConfig,
    LizardForCausalLM,
    LizardModel,
    ParaRNNConfig,
    ParaRNNForCausalLM,
    ParaRNNModel,
    PLSTMConfig,
    PLSTMForCausalLM,
    PLSTMModel,
    RecurrentDepthConfig,
    RecurrentDepthForCausalLM,
    RecurrentDepthModel,
    S4DConfig,
    S4DForCausalLM,
    S4DModel,
)


@pytest.fixture(autouse=True, scope="module")
def _listed_like_built_in_models():
    """Upstream's tests find a model's task by its class name in transformers' name tables (``MODEL_MAPPING_NAMES``:
    base models, no loss; ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``: gets labels). Registered plugin classes are not in
    those tables, so they are listed there for these tests, as a built-in model is, and taken out afterwards."""
    tables = {"MODEL_MAPPING_NAMES": 1, "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": 2}
    added = []
    for config_class, model_class, lm_class in hf_seqmodels.ARCHITECTURES:
        for table, index in tables.items():
            names = getattr(modeling_auto, table)
            if config_class.model_type not in names:
                names[config_class.model_type] = (config_class, model_class, lm_class)[index].__name__
                added.append((names, config_class.model_type))
    yield
    for names, key in added:
        del names[key]


class TinyModelTester:
    """Tiny configs and inputs, in the shape upstream's testers have (batch_size, seq_length, ... attributes)."""

    def __init__(
        self, parent, config_class, config_kwargs, causal_lm_class, batch_size=2, seq_length=7, is_training=True
    ):
        self.parent = parent
        self.config_class = config_class
        self.causal_lm_class = causal_lm_class  # what TrainingTesterMixin trains
        self.config_kwargs = dict(config_kwargs)
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = is_training
        probe = config_class(**self.config_kwargs)
        self.vocab_size = probe.vocab_size
        self.hidden_size = probe.hidden_size
        self.num_hidden_layers = probe.num_hidden_layers
        self.pad_token_id = probe.pad_token_id

    def get_config(self):
        return self.config_class(**self.config_kwargs)

    def prepare_config_and_inputs(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        # left padding on the first row (the padding our models and generate() use)
        attention_mask = torch.ones(self.batch_size, self.seq_length, dtype=torch.long, device=input_ids.device)
        attention_mask[0, :2] = 0
        return self.get_config(), input_ids, attention_mask

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, attention_mask = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": attention_mask}


_COMMON = dict(
    vocab_size=99,
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=2,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
_LLAMA = dict(_COMMON, num_attention_heads=4, num_key_value_heads=2)


class SeqModelTestBase(ModelTesterMixin, GenerationTesterMixin, TrainingTesterMixin):
    """What every architecture here shares; a subclass names its classes, config and tiny config kwargs."""

    config_class = None
    config_kwargs: dict = {}
    has_attentions = False  # no attention weights to return (recurrent / linear-attention mixers)
    test_missing_keys = True
    test_torch_exportable = False  # the recurrent cache is not a torch.export pytree
    # upstream runs this check (every weight is set by _init_weights) only on models whose configuration file has a
    # copyright year >= 2023 in its header; ours have no such header
    test_can_init_all_missing_weights_before_2023 = True
    # TrainingTesterMixin's overfit test (train on a repeated pattern, then generate it back), shortened from
    # upstream's 300 steps at 64 tokens to keep the CPU suite fast
    training_overfit_steps = 100
    training_overfit_seq_length = 32
    training_overfit_learning_rate = 3e-3

    def setUp(self):
        self.model_tester = TinyModelTester(self, self.config_class, self.config_kwargs, self.all_model_classes[-1])
        # ConfigTester reads each given field back from the JSON: give it the stored values (HNetConfig completes its
        # nested dicts with defaults)
        probe = self.model_tester.get_config()
        self.config_tester = ConfigTester(
            self,
            config_class=self.config_class,
            **{k: getattr(probe, k) for k in self.config_kwargs},
            common_properties=["hidden_size", "num_hidden_layers"],
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    if GENERATION_MIXIN_IS_STUB:

        @unittest.skip(
            reason="the transformers sdist does not ship tests/generation/test_utils.py "
            "(GenerationTesterMixin); generate() is tested in tests/integration/test_generation.py"
        )
        def test_generation_tester_mixin_inheritance(self):
            pass


class GLAModelTest(SeqModelTestBase, unittest.TestCase):
    all_model_classes = (GLAModel, GLAForCausalLM)
    config_class = GLAConfig
    config_kwargs = dict(_COMMON, num_heads=2, use_short_conv=True)


class ParaGRUModelTest(SeqModelTestBase, unittest.TestCase):
    all_model_classes = (ParaRNNModel, ParaRNNForCausalLM)
    config_class = ParaRNNConfig
    config_kwargs = dict(_COMMON, cell="gru", num_heads=2)


class ParaLSTMModelTest(SeqModelTestBase, unittest.TestCase):
    all_model_classes = (ParaRNNModel, ParaRNNForCausalLM)
    config_class = ParaRNNConfig
    config_kwargs = dict(_COMMON, cell="lstm", num_heads=1, use_short_conv=False, tie_word_embeddings=True)


class PLSTMModelTest(SeqModelTestBase, unittest.TestCase):
    all_model_classes = (PLSTMModel, PLSTMForCausalLM)
    config_class = PLSTMConfig
    config_kwargs = dict(_COMMON, num_heads=2, head_k_dim=8, head_v_dim=8, source_dim=2, use_short_conv=True)


class S4DModelTest(SeqModelTestBase, unittest.TestCase):
    all_model_classes = (S4DModel, S4DForCausalLM)
    config_class = S4DConfig
    config_kwargs = dict(_COMMON, d_state=8, ssm_init="legs")


class LigerModelTest(SeqModelTestBase, unittest.TestCase):
    all_model_classes = (LigerModel, LigerForCausalLM)
    config_class = LigerConfig
    config_kwargs = dict(_LLAMA, window_size=4, tie_word_embeddings=True)


class LizardModelTest(SeqModelTestBase, unittest.TestCase):
    all_model_classes = (LizardModel, LizardForCausalLM)
    config_class = LizardConfig
    config_kwargs = dict(_LLAMA, window_size=4, num_sinks=2)


class AarenModelTest(SeqModelTestBase, unittest.TestCase):
    all_model_classes = (AarenModel, AarenForCausalLM)
    config_class = AarenConfig
    config_kwargs = dict(_COMMON, num_heads=2)


class GAMModelTest(SeqModelTestBase, unittest.TestCase):
    all_model_classes = (GAMModel, GAMForCausalLM)
    config_class = GAMConfig
    config_kwargs = dict(_COMMON, num_memory_slots=16, tie_word_embeddings=True)


class RecurrentDepthModelTest(SeqModelTestBase, unittest.TestCase):
    all_model_classes = (RecurrentDepthModel, RecurrentDepthForCausalLM)
    config_class = RecurrentDepthConfig
    # prelude, core and coda of one block each, the core applied twice; deterministic: a zero initial latent state
    # (init_scale 0) and the fixed training depth
    # Huginn's field names (hidden_size and num_hidden_layers are aliases of n_embd and n_layers, not stored)
    config_kwargs = dict(
        {k: v for k, v in _COMMON.items() if k not in ("hidden_size", "num_hidden_layers")},
        n_embd=32,
        n_heads=2,
        n_layers_in_prelude=1,
        n_layers_in_recurrent_block=1,
        n_layers_in_coda=1,
        mean_recurrence=2,
        mean_backprop_depth=2,
        sampling_scheme="fixed",
        init_scale=0.0,
    )

    def setUp(self):
        super().setUp()
        # hidden_states: the prelude's output, the latent state after the recurrence (ln_f), the coda's output
        self.model_tester.expected_num_hidden_layers = 3

    def test_num_layers_is_small(self):
        # a prelude, a recurrent core and a coda: three blocks at the least
        self.assertLessEqual(self.model_tester.num_hidden_layers, 3)


class HNetModelTest(SeqModelTestBase, unittest.TestCase):
    all_model_classes = (HNetModel, HNetForCausalLM)
    config_class = HNetConfig
    # the smallest H-Net: Mamba-2 encoder, attention main network (2 heads, wider), Mamba-2 + MLP decoder
    config_kwargs = dict(
        arch_layout=["m1", ["T1"], "M1"],
        d_model=[32, 48],
        d_intermediate=[37, 64],
        ssm_cfg={"d_state": 8, "head_dim": 16, "chunk_size": 8},
        attn_cfg={"num_heads": [2, 2], "rotary_emb_dim": [8, 8], "window_size": [3, -1]},
    )

    def setUp(self):
        super().setUp()
        # H-Net's stages run at different lengths and widths (the inner ones on chunks): `hidden_states` holds the
        # outermost decoder's output only
        self.model_tester.expected_num_hidden_layers = 1

    def test_num_layers_is_small(self):
        # upstream allows 2 layers unless a model is on its list of exceptions; an H-Net needs an encoder, a main
        # network and a decoder
        self.assertLessEqual(self.model_tester.num_hidden_layers, 3)

    def test_batching_equivalence(self):
        # `boundary_fractions` [num_stages] is a statistic of the whole batch (as the loss is), not one per row: the
        # upstream test compares every other output
        class HNetForCausalLMRowOutputs(HNetForCausalLM):
            def forward(self, *args, **kwargs):
                out = super().forward(*args, **kwargs)
                return type(out)(**{k: v for k, v in out.items() if k != "boundary_fractions"})

        self.all_model_classes = (HNetModel, HNetForCausalLMRowOutputs)
        super().test_batching_equivalence()

    def test_model_outputs_equivalence(self):
        # upstream's version formats `tuple - dict` for every tensor output, which torch refuses for the boolean
        # boundary masks: the same check (tuple outputs == dict outputs), exact for boolean tensors
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()

        def check(a, b):
            if isinstance(a, (list, tuple)):
                self.assertEqual(len(a), len(b))
                for x, y in zip(a, b):
                    check(x, y)
            elif isinstance(a, torch.Tensor):
                if a.is_floating_point():
                    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
                else:
                    self.assertTrue(torch.equal(a, b))
            elif a is None:
                self.assertIsNone(b)

        for model_class in self.all_model_classes:
            model = model_class(config).eval()
            for labels in (False, True):
                for extra in ({}, {"output_hidden_states": True}):
                    inputs = self._prepare_for_class(inputs_dict, model_class, return_labels=labels)
                    with torch.no_grad():
                        check(
                            model(**inputs, return_dict=False, **extra),
                            model(**inputs, return_dict=True, **extra).to_tuple(),
                        )
