from hf_seqmodels.layers.pararnn import ParaRNNMixer
from hf_seqmodels.models.causal_lm import SeqForCausalLM, SeqModel, SeqPreTrainedModel

from .configuration_pararnn import ParaRNNConfig


class ParaRNNPreTrainedModel(SeqPreTrainedModel):
    config_class = ParaRNNConfig


class ParaRNNModel(SeqModel, ParaRNNPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.register_forward_pre_hook(_apply_solver_settings)

    def build_mixer(self, config, layer_idx):
        return ParaRNNMixer.from_config(config, layer_idx)


def _apply_solver_settings(model, args):
    """Before every forward: the mixers solve as ``model.config`` says now (``model.config.mode = ...`` applies)."""
    c = model.config
    for block in model.layers:
        block.mixer.configure_solver(c.mode, c.newton_tol, c.newton_max_iter, c.newton_on_fail)


class ParaRNNForCausalLM(SeqForCausalLM, ParaRNNPreTrainedModel):
    base_model_class = ParaRNNModel
