"""S4D training helper (Gu et al., 2022, arXiv 2206.11893): the reference's optimizer groups
(:func:`s4d_parameter_groups`)."""

from __future__ import annotations

from hf_seqmodels.layers.checks import check_number
from hf_seqmodels.layers.s4d import S4D


def s4d_parameter_groups(model, lr: float, weight_decay: float = 0.0, ssm_lr: float = 1e-3) -> list[dict]:
    """Optimizer parameter groups for a model holding S4D mixers (an S4D model, an H-Net with ``s`` layers, or a PEFT
    model wrapping one), as the reference trains S4D.

    The state-space parameters of every S4D mixer (``log_dt``, ``log_A_real``, ``A_imag``: the ones the reference
    registers with an ``_optim`` attribute) get ``lr = min(lr, ssm_lr)`` (reference: ``min(lr, 1e-3)``) and no weight
    decay; every other trainable parameter gets ``lr`` and ``weight_decay`` (the reference's single AdamW group).
    Use with any torch optimizer: ``torch.optim.AdamW(s4d_parameter_groups(model, lr=1e-2, weight_decay=0.01))``.
    """
    check_number("s4d_parameter_groups", "lr", lr)
    check_number("s4d_parameter_groups", "weight_decay", weight_decay, positive=False, minimum=0.0)
    check_number("s4d_parameter_groups", "ssm_lr", ssm_lr)
    ssm = {
        id(getattr(m, name))
        for m in model.modules()
        if isinstance(m, S4D)
        for name in S4D.ssm_params
        if getattr(m, name).requires_grad
    }
    if not ssm:
        raise ValueError(f"s4d_parameter_groups: {type(model).__name__} holds no trainable S4D state-space parameter")
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if id(p) not in ssm], "lr": lr, "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in ssm], "lr": min(lr, ssm_lr), "weight_decay": 0.0},
    ]
