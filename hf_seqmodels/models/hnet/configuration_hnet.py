"""H-Net configuration: the nested layout of the reference configs (goombalab/hnet), with this package's mixers."""

from __future__ import annotations

import copy
import re

from transformers import PretrainedConfig

from hf_seqmodels.layers.checks import check_int, check_number
from hf_seqmodels.models.causal_lm import default_intermediate_size

#: layer letters: lowercase = mixer only, uppercase = mixer + SwiGLU MLP (needs d_intermediate > 0 for the stage)
LAYER_LETTERS = {
    "m": "mamba2",
    "t": "attention",
    "g": "gla",
    "r": "paragru",
    "l": "paralstm",
    "p": "plstm",
    "s": "s4d",
    "a": "aaren",
    "b": "gam",
}
_LAYER_RE = re.compile(rf"([{''.join(LAYER_LETTERS)}{''.join(LAYER_LETTERS).upper()}])(\d+)")

_SSM = {"d_state": 128, "expand": 2, "head_dim": 64, "n_groups": 1, "d_conv": 4, "chunk_size": 256}

#: the four released configurations of the reference, as presets (their shapes; vocab 256, untied embeddings)
PRESETS = {
    "1stage_L": dict(
        arch_layout=["m4", ["T22"], "m4"],
        d_model=[1024, 1536],
        d_intermediate=[0, 4096],
        attn_cfg={"num_heads": [16, 16], "rotary_emb_dim": [32, 48], "window_size": [1023, -1]},
    ),
    "1stage_XL": dict(
        arch_layout=["m4", ["T24"], "m4"],
        d_model=[1024, 2048],
        d_intermediate=[0, 5504],
        attn_cfg={"num_heads": [16, 16], "rotary_emb_dim": [32, 64], "window_size": [1023, -1]},
    ),
    "2stage_L": dict(
        arch_layout=["m4", ["T1m4", ["T26"], "m4T1"], "m4"],
        d_model=[1024, 1024, 1536],
        d_intermediate=[0, 2816, 4096],
        attn_cfg={"num_heads": [16, 16, 16], "rotary_emb_dim": [32, 32, 48], "window_size": [1023, 1023, -1]},
    ),
    "2stage_XL": dict(
        arch_layout=["m4", ["T1m4", ["T27"], "m4T1"], "m4"],
        d_model=[1024, 1536, 2048],
        d_intermediate=[0, 4096, 5504],
        attn_cfg={"num_heads": [16, 16, 16], "rotary_emb_dim": [32, 48, 64], "window_size": [1023, 1023, -1]},
    ),
}


def parse_layer_string(spec: str, where: str = "arch_layout") -> list[str]:
    """``"T1m4"`` -> ``["T", "m", "m", "m", "m"]``; raises on anything that is not letter-count pairs."""
    if not isinstance(spec, str):
        raise TypeError(
            f"HNetConfig.{where}: a layer string (such as 'm4' or 'T1m4') must be a str, got "
            f"{type(spec).__name__} {spec!r}"
        )
    if _LAYER_RE.sub("", spec) != "":
        raise ValueError(
            f"HNetConfig.{where}: {spec!r} is not a layer string (letter-count pairs such as 'm4' or 'T1m4'; letters "
            f"{''.join(LAYER_LETTERS)} or uppercase for a layer with an MLP)"
        )
    return [letter for letter, n in _LAYER_RE.findall(spec) for _ in range(int(n))]


def stage_layouts(arch_layout) -> list[tuple]:
    """Per stage, outermost first: ``(encoder, decoder)`` strings, then ``(main,)`` for the innermost."""
    out, layout, depth = [], arch_layout, 0
    while True:
        if not isinstance(layout, (list, tuple)) or len(layout) not in (1, 3):
            raise ValueError(
                f"HNetConfig.arch_layout: stage {depth} must be [encoder, inner, decoder] or [main] (innermost), got "
                f"{layout!r}"
            )
        if len(layout) == 1:
            out.append((layout[0],))
            return out
        out.append((layout[0], layout[2]))
        layout, depth = layout[1], depth + 1


def _given(cfg: dict | None) -> dict:
    """The keys of a settings dict that are set (a key left None takes its default)."""
    return {k: v for k, v in (cfg or {}).items() if v is not None}


def _per_stage(name: str, values, minimum: int) -> list[int]:
    """``d_model`` / ``d_intermediate``: a list with one int per stage (its length is checked with the layout)."""
    if not isinstance(values, (list, tuple)):
        raise TypeError(
            f"HNetConfig.{name} must be a list with one int per stage (outermost first), got "
            f"{type(values).__name__} {values!r}"
        )
    for s, value in enumerate(values):
        check_int("HNetConfig", f"{name}[{s}]", value, minimum=minimum)
    return [int(v) for v in values]


def _numbers(name: str, values) -> list[float]:
    """``compression_ratio`` / ``lr_multipliers``: one number per stage (a single number: a list of one)."""
    values = values if isinstance(values, (list, tuple)) else [values]
    for s, value in enumerate(values):
        check_number("HNetConfig", f"{name}[{s}]", value)
    return [float(v) for v in values]


class HNetConfig(PretrainedConfig):
    """H-Net: a byte-level language model with learned dynamic chunking (Hwang, Wang, Gu, 2025).

    Args:
        arch_layout: nested ``[encoder, inner, decoder]`` lists (innermost ``[main]``) of layer strings, e.g.
            ``["m4", ["T22"], "m4"]``. Letters: ``m`` Mamba-2, ``t`` softmax attention, ``g`` GLA, ``r`` ParaGRU,
            ``l`` ParaLSTM, ``a`` Aaren (``attn_cfg``'s heads of the stage), ``b`` GAM (512 memory slots, kernel 3);
            uppercase adds a SwiGLU MLP to the layer.
            Left None (with ``d_model`` and ``d_intermediate``): a small 1-stage model, ``["m2", ["T4"], "m2"]``.
        d_model / d_intermediate: width and MLP width per stage, outermost first (widths may only grow inward; a
            wider stage pads with a learned vector and slices back on the way out). ``d_model`` is required with an
            ``arch_layout``; ``d_intermediate`` left None is 0 for a stage without MLP layers and SwiGLU's 8/3 x
            ``d_model`` rounded up to a multiple of 64 for a stage with them (1536 -> 4096, 2048 -> 5504 as in the
            reference's released shapes).
        ssm_cfg: Mamba-2 settings (``d_state``, ``expand``, ``head_dim``, ``n_groups``, ``d_conv``, ``chunk_size``).
        attn_cfg: per stage ``num_heads``, ``rotary_emb_dim`` and ``window_size`` (the reference's flash-attn
            convention: a query sees ``window_size`` earlier keys and itself; -1 = global). Defaults: ``d // 64``
            heads, half of each head's width (rounded down to even) rotated, a 1023 window except in the innermost
            stage.
        gla_cfg / pararnn_cfg: options of the GLA and ParaRNN layers (see GLAConfig / ParaRNNConfig).
        In ``ssm_cfg``, ``attn_cfg``, ``gla_cfg`` and ``pararnn_cfg``, a key left out or None takes its default.
        compression_ratio: target ``N`` per chunking stage (outermost first); the ratio loss is minimal at 1/N.
        ratio_loss_weight: weight of the summed ratio losses in ``loss`` (paper: 0.03).
        ratio_loss_reduction: ``"sequence"`` (the paper: ``F``, ``G`` per sequence, loss averaged over sequences; the
            same however a batch is split over devices or accumulation steps) or ``"batch"`` (the reference's
            training code: ``F``, ``G`` over the whole micro-batch).
        lr_multipliers: per-stage learning-rate multipliers, outermost first (see
            ``hf_seqmodels.training.hnet_parameter_groups``).
        boundary_router: ``"learned"`` (the routing module) or ``"word"`` (HAT's fixed word-boundary rule on the
            input bytes; outermost stage only, inner stages stay learned); ``word_max_chunk_bytes`` cuts long words.
        embedding_init_std: std of the byte embedding's init (reference: 1.0); other linears use
            ``initializer_range``, residual output projections scaled by ``1/sqrt(n_residuals)``.
    Special tokens are the ByteTokenizer's: pad 253, bos 254, eos 255 (bytes that never occur in UTF-8).
    """

    model_type = "hf_seqmodels_hnet"
    #: documented default LoRA targets: attention and Mamba-2 projections, MLPs (not the routers)
    lora_target_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "in_proj", "out_proj"]

    def __init__(
        self,
        arch_layout=None,
        d_model=None,
        d_intermediate=None,
        vocab_size: int = 256,
        ssm_cfg: dict | None = None,
        attn_cfg: dict | None = None,
        gla_cfg: dict | None = None,
        pararnn_cfg: dict | None = None,
        compression_ratio=None,
        ratio_loss_weight: float = 0.03,
        ratio_loss_reduction: str = "sequence",
        lr_multipliers=None,
        boundary_router: str = "learned",
        word_max_chunk_bytes: int = 16,
        rms_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        embedding_init_std: float = 1.0,
        rope_theta: float = 10000.0,
        use_cache: bool = True,
        tie_word_embeddings: bool = False,
        pad_token_id: int | None = 253,
        bos_token_id: int | None = 254,
        eos_token_id: int | None = 255,
        **kwargs,
    ):
        if arch_layout is None:  # a small 1-stage byte model (~3.6M parameters) that trains on a CPU
            if d_model is not None or d_intermediate is not None:
                raise ValueError(
                    "HNetConfig: d_model / d_intermediate were given without arch_layout; pass the "
                    "arch_layout they are for (left None, the default layout comes with its own widths)"
                )
            arch_layout, d_model, d_intermediate = ["m2", ["T4"], "m2"], [128, 256], [0, 512]
            ssm_cfg = {"d_state": 32, "head_dim": 32, **_given(ssm_cfg)}
            attn_cfg = attn_cfg or {"num_heads": [4, 4], "rotary_emb_dim": [16, 32], "window_size": [1023, -1]}
        stages = stage_layouts(arch_layout)
        if d_model is None:
            raise ValueError(
                f"HNetConfig.d_model is required with arch_layout {arch_layout!r}: one width per stage, "
                f"outermost first ({len(stages)} entries)"
            )
        self.arch_layout = copy.deepcopy(list(arch_layout))
        self.d_model = _per_stage("d_model", d_model, minimum=1)
        if d_intermediate is None:  # an MLP width where the stage has MLP layers (uppercase letters)
            has_mlp = [any(c.isupper() for spec in stage for c in parse_layer_string(spec)) for stage in stages]
            d_intermediate = [default_intermediate_size(d) if mlp else 0 for d, mlp in zip(self.d_model, has_mlp)]
        self.d_intermediate = _per_stage("d_intermediate", d_intermediate, minimum=0)
        self.vocab_size = vocab_size
        self.ssm_cfg = {**_SSM, **_given(ssm_cfg)}
        S = len(self.d_model)
        default_heads = [max(1, d // 64) for d in self.d_model]
        attn = _given(attn_cfg)
        heads = list(attn.get("num_heads", default_heads))
        # half of each head rotated, an even number (a bad head count is named by _validate)
        half_head = [d // h // 4 * 2 if isinstance(h, int) and h > 0 else 0 for d, h in zip(self.d_model, heads)]
        self.attn_cfg = {
            "num_heads": heads,
            "rotary_emb_dim": list(attn.get("rotary_emb_dim", half_head)),
            "window_size": list(attn.get("window_size", [1023] * (S - 1) + [-1])),
        }
        self.gla_cfg = {
            "num_heads": 4,
            "expand_k": 0.5,
            "expand_v": 1.0,
            "use_short_conv": True,
            "conv_size": 4,
            **_given(gla_cfg),
        }
        self.pararnn_cfg = {
            "num_heads": 1,
            "use_short_conv": True,
            "conv_size": 4,
            "mode": "parallel",
            "newton_max_iter": 10,
            "newton_tol": None,
            "newton_on_fail": "fallback",
            **_given(pararnn_cfg),
        }
        n_chunk = S - 1
        if compression_ratio is None:
            compression_ratio = [6.0] if n_chunk == 1 else [3.0] + [2.0] * (n_chunk - 1)
        self.compression_ratio = _numbers("compression_ratio", compression_ratio)
        self.ratio_loss_weight = ratio_loss_weight
        self.ratio_loss_reduction = ratio_loss_reduction
        self.lr_multipliers = _numbers("lr_multipliers", lr_multipliers) if lr_multipliers is not None else [1.0] * S
        self.boundary_router = boundary_router
        self.word_max_chunk_bytes = word_max_chunk_bytes
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.embedding_init_std = embedding_init_std
        self.rope_theta = rope_theta
        self.use_cache = use_cache
        self.tie_word_embeddings = tie_word_embeddings
        self.hidden_size = self.d_model[0]
        self._validate()
        self.num_hidden_layers = sum(
            len(parse_layer_string(s)) for stage in stage_layouts(self.arch_layout) for s in stage
        )
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "HNetConfig":
        """One of the reference's released shapes: ``1stage_L``, ``1stage_XL``, ``2stage_L``, ``2stage_XL``."""
        if name not in PRESETS:
            raise ValueError(f"HNetConfig.from_preset: unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**copy.deepcopy(PRESETS[name]), **kwargs})

    @property
    def num_stages(self) -> int:
        """Number of chunking stages (1 for a 1-stage H-Net)."""
        return len(self.d_model) - 1

    def _validate(self):
        from hf_seqmodels.kernels.pararnn import check_newton_options
        from hf_seqmodels.layers.aaren import aaren_dims
        from hf_seqmodels.layers.gla import gla_dims
        from hf_seqmodels.layers.pararnn import check_mode, pararnn_shape

        stages = stage_layouts(self.arch_layout)
        S = len(stages)
        check_int("HNetConfig", "vocab_size", self.vocab_size)
        check_number("HNetConfig", "rms_norm_eps", self.rms_norm_eps)
        check_number("HNetConfig", "initializer_range", self.initializer_range, positive=False, minimum=0.0)
        check_number("HNetConfig", "embedding_init_std", self.embedding_init_std, positive=False, minimum=0.0)
        check_number("HNetConfig", "ratio_loss_weight", self.ratio_loss_weight, positive=False, minimum=0.0)
        check_number("HNetConfig", "rope_theta", self.rope_theta)
        check_int("HNetConfig", "word_max_chunk_bytes", self.word_max_chunk_bytes)
        for s, (d, di) in enumerate(zip(self.d_model, self.d_intermediate)):
            check_int("HNetConfig", f"d_model[{s}]", d)
            check_int("HNetConfig", f"d_intermediate[{s}]", di, minimum=0)
        for s, (h, r, w) in enumerate(zip(*(self.attn_cfg[k] for k in ("num_heads", "rotary_emb_dim", "window_size")))):
            check_int("HNetConfig", f"attn_cfg['num_heads'][{s}]", h)
            check_int("HNetConfig", f"attn_cfg['rotary_emb_dim'][{s}]", r, minimum=0)
            # earlier keys a query sees besides itself (the attention layer's window is this + 1); -1: global
            check_int("HNetConfig", f"attn_cfg['window_size'][{s}]", w, minimum=-1)
        for key in ("d_state", "head_dim", "n_groups", "d_conv", "chunk_size"):
            check_int("HNetConfig", f"ssm_cfg[{key!r}]", self.ssm_cfg[key])
        check_number("HNetConfig", "ssm_cfg['expand']", self.ssm_cfg["expand"])
        letters_used = {c.lower() for layouts in stages for spec in layouts for c in parse_layer_string(spec)}
        for s, d in enumerate(self.d_model):  # the mixers' own shape checks, for the stages that build them
            if "g" in letters_used:
                g = self.gla_cfg
                gla_dims(
                    f"HNetConfig.gla_cfg (stage {s}, d_model {d})", d, g["num_heads"], g["expand_k"], g["expand_v"]
                )
            if "a" in letters_used:
                aaren_dims(f"HNetConfig.attn_cfg (stage {s}, d_model {d})", d, self.attn_cfg["num_heads"][s], None)
            if letters_used & {"r", "l"}:
                pararnn_shape(f"HNetConfig.pararnn_cfg (stage {s})", d, d, self.pararnn_cfg["num_heads"])
        if letters_used & {"r", "l"}:
            p = self.pararnn_cfg
            check_mode("HNetConfig.pararnn_cfg", p["mode"])
            check_newton_options(
                "HNetConfig.pararnn_cfg", p["newton_tol"], p["newton_max_iter"], p["newton_on_fail"], prefix="newton_"
            )
        for name in ("d_model", "d_intermediate"):
            if len(getattr(self, name)) != S:
                raise ValueError(
                    f"HNetConfig.{name} needs one entry per stage ({S} for arch_layout {self.arch_layout}), "
                    f"got {getattr(self, name)}"
                )
        for key, values in self.attn_cfg.items():
            if len(values) != S:
                raise ValueError(f"HNetConfig.attn_cfg[{key!r}] needs one entry per stage ({S}), got {values}")
        if any(b < a for a, b in zip(self.d_model, self.d_model[1:])):
            raise ValueError(f"HNetConfig.d_model must not shrink inward (outermost first), got {self.d_model}")
        if len(self.compression_ratio) != S - 1 or any(n <= 1 for n in self.compression_ratio):
            raise ValueError(
                f"HNetConfig.compression_ratio needs one target N > 1 per chunking stage ({S - 1}), "
                f"got {self.compression_ratio}"
            )
        if len(self.lr_multipliers) != S:
            raise ValueError(f"HNetConfig.lr_multipliers needs one entry per stage ({S}), got {self.lr_multipliers}")
        if self.ratio_loss_reduction not in ("sequence", "batch"):
            raise ValueError(
                f"HNetConfig.ratio_loss_reduction must be 'sequence' or 'batch', got {self.ratio_loss_reduction!r}"
            )
        if self.boundary_router not in ("learned", "word"):
            raise ValueError(f"HNetConfig.boundary_router must be 'learned' or 'word', got {self.boundary_router!r}")
        if S < 2:
            raise ValueError("HNetConfig.arch_layout needs at least one chunking stage ([encoder, [main], decoder])")
        for s, layouts in enumerate(stages):
            for spec in layouts:
                letters = parse_layer_string(spec)
                if any(c.isupper() for c in letters) and self.d_intermediate[s] <= 0:
                    raise ValueError(
                        f"HNetConfig: stage {s} layer string {spec!r} has MLP layers (uppercase) but "
                        f"d_intermediate[{s}] is {self.d_intermediate[s]}"
                    )
                if "t" in spec.lower():
                    h = self.attn_cfg["num_heads"][s]
                    if self.d_model[s] % h:
                        raise ValueError(
                            f"HNetConfig.attn_cfg['num_heads'][{s}] = {h} must divide d_model[{s}] = {self.d_model[s]}"
                        )
        for s, (layouts, d) in enumerate(zip(stages, self.d_model)):  # Mamba-2's shape check, stages that have it
            if "m" in {c.lower() for spec in layouts for c in parse_layer_string(spec)}:
                m = self.ssm_cfg
                inner = m["expand"] * d
                if inner != int(inner) or int(inner) % m["head_dim"] or int(inner) // m["head_dim"] % m["n_groups"]:
                    raise ValueError(
                        f"HNetConfig.ssm_cfg['head_dim'] = {m['head_dim']} must divide Mamba-2's inner width "
                        f"ssm_cfg['expand'] * d_model[{s}] = {m['expand']} * {d} (an integer) into a number of heads "
                        f"that ssm_cfg['n_groups'] = {m['n_groups']} divides"
                    )
