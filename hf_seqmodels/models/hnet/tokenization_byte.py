"""A byte-level tokenizer for H-Net (and any vocab-256 byte model): token ids are the text's UTF-8 bytes."""

from __future__ import annotations

import json
import operator
import os

from transformers import AutoTokenizer, PreTrainedTokenizer

#: ids of the special tokens: bytes that never occur in valid UTF-8
PAD_ID, BOS_ID, EOS_ID = 0xFD, 0xFE, 0xFF
#: the loader file ``save_pretrained`` writes beside tokenizer_config.json (``trust_remote_code=True``)
TOKENIZER_FILE = "tokenization_hf_seqmodels.py"
_TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
_NUM_BYTES = 256


def _byte_token(b: int) -> str:
    return f"<0x{b:02X}>"


class ByteTokenizer(PreTrainedTokenizer):
    """UTF-8 byte tokenizer: ``vocab_size`` 256, token id = byte value, no files to load.

    - Text is encoded as its UTF-8 bytes, one token per byte (ids 0..255). Ordinary bytes are the tokens
      ``"<0x00>"`` .. ``"<0xFC>"`` (the sentencepiece byte-fallback spelling).
    - The special tokens are the three byte values that never occur in valid UTF-8, so they can never be confused
      with text: ``PAD = 253 (0xFD, "<pad>")``, ``BOS = 254 (0xFE, "<bos>")``, ``EOS = 255 (0xFF, "<eos>")``. Their
      ids are fixed; ``pad_token`` / ``bos_token`` / ``eos_token`` only rename them. There is no unknown token.
    - ``add_bos_token=True`` (default) puts BOS before each sequence, ``add_eos_token=False`` (default) EOS after
      it (``add_special_tokens=False`` adds neither); both options are saved in tokenizer_config.json. A pair is
      ``[BOS] a [EOS] [BOS] b [EOS]`` with the tokens each option enables.
    - ``split_special_tokens=True`` (default): text is always bytes, even text that spells ``"<bos>"``, so
      ``decode(encode(s), skip_special_tokens=True) == s`` for every string. Pass ``split_special_tokens=False`` to
      have ``"<bos>"``, ``"<eos>"``, ``"<pad>"`` (and added tokens) in the text mean the tokens.
    - Decoding joins the bytes and decodes them as UTF-8 with replacement characters for invalid sequences. Ids
      outside ``0 .. len(tokenizer) - 1`` raise ``ValueError``. Tokens added with ``add_tokens`` get ids from 256 on
      (the model's embedding must then grow).
    - ``save_pretrained`` writes tokenizer_config.json (with ``auto_map``) and ``tokenization_hf_seqmodels.py``, so
      ``AutoTokenizer.from_pretrained(folder, trust_remote_code=True)`` works without importing hf_seqmodels first;
      after ``import hf_seqmodels`` the tokenizer is registered with the H-Net config and needs no remote code.
    """

    vocab_files_names: dict = {}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        split_special_tokens: bool = True,
        **kwargs,
    ):
        kwargs.pop("auto_map", None)  # always rewritten by save_pretrained
        kwargs.pop("unk_token", None)  # every byte is a token: nothing is unknown
        self.add_bos_token = bool(add_bos_token)
        self.add_eos_token = bool(add_eos_token)
        # the base vocabulary must exist before the base class looks the special tokens up
        self._special_ids = {str(pad_token): PAD_ID, str(bos_token): BOS_ID, str(eos_token): EOS_ID}
        if len(self._special_ids) != 3:
            raise ValueError(
                f"bos_token, eos_token and pad_token must differ, got {bos_token!r}, {eos_token!r}, {pad_token!r}"
            )
        self._id_to_token = [_byte_token(b) for b in range(_NUM_BYTES)]
        for token, i in self._special_ids.items():
            self._id_to_token[i] = token
        self._vocab = {t: i for i, t in enumerate(self._id_to_token)}
        super().__init__(
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            add_bos_token=add_bos_token,
            add_eos_token=add_eos_token,
            split_special_tokens=split_special_tokens,
            **kwargs,
        )

    # -- vocabulary -------------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return _NUM_BYTES

    def get_vocab(self) -> dict[str, int]:
        vocab = dict(self._vocab)
        vocab.update(getattr(self, "_added_tokens_encoder", {}))
        return vocab

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        tokens = self._id_to_token
        return [tokens[b] for b in text.encode("utf-8")]

    def _convert_token_to_id(self, token: str) -> int:
        try:
            return self._vocab[token]
        except KeyError:
            raise ValueError(
                f"{token!r} is not a ByteTokenizer token (bytes are spelled '<0x00>' .. '<0xFF>')"
            ) from None

    def _convert_id_to_token(self, index: int) -> str:
        return self._id_to_token[self._checked_ids([index], "ids")[0]]

    def _checked_ids(self, ids, argument: str) -> list[int]:
        """``ids`` as a list of ints, or a ValueError naming ``argument`` for a non-integer or out-of-range id."""
        try:
            ids = [operator.index(i) for i in ids]
        except TypeError:
            bad = next(i for i in ids if not hasattr(i, "__index__"))
            raise ValueError(f"{argument} must hold integer token ids, got {bad!r} ({type(bad).__name__})") from None
        limit = max(_NUM_BYTES, len(self))
        if ids and not (0 <= min(ids) and max(ids) < limit):
            k, bad = next((k, i) for k, i in enumerate(ids) if not 0 <= i < limit)
            added = f", added tokens {_NUM_BYTES}..{limit - 1}" if limit > _NUM_BYTES else ""
            raise ValueError(
                f"{argument} holds {bad} at position {k}, which is not a ByteTokenizer id (bytes are 0..255{added})"
            )
        return ids

    # -- special tokens ---------------------------------------------------------------------------------------------
    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        bos = [BOS_ID] if self.add_bos_token else []
        eos = [EOS_ID] if self.add_eos_token else []
        out = bos + list(token_ids_0) + eos
        if token_ids_1 is not None:
            out += bos + list(token_ids_1) + eos
        return out

    def get_special_tokens_mask(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None, already_has_special_tokens: bool = False
    ) -> list[int]:
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, already_has_special_tokens=True)
        bos = [1] if self.add_bos_token else []
        eos = [1] if self.add_eos_token else []
        mask = bos + [0] * len(token_ids_0) + eos
        if token_ids_1 is not None:
            mask += bos + [0] * len(token_ids_1) + eos
        return mask

    def create_token_type_ids_from_sequences(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        return [0] * len(self.build_inputs_with_special_tokens(token_ids_0, token_ids_1))

    # -- decoding ---------------------------------------------------------------------------------------------------
    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self._join(self.convert_tokens_to_ids(list(tokens)), skip=())

    def _join(self, ids: list[int], skip) -> str:
        """Ids to text: runs of byte ids are decoded as UTF-8 (invalid bytes -> U+FFFD); special and added tokens
        (ids >= 253) are written as their strings unless their id is in ``skip``."""
        if skip:
            ids = [i for i in ids if i not in skip]
        pieces: list[str] = []
        start = 0
        for k in [k for k, i in enumerate(ids) if i >= PAD_ID]:  # the ids that are not bytes of text
            pieces.append(bytes(ids[start:k]).decode("utf-8", errors="replace"))
            i = ids[k]
            pieces.append(
                self._added_tokens_decoder[i].content if i in self._added_tokens_decoder else self._id_to_token[i]
            )
            start = k + 1
        pieces.append(bytes(ids[start:]).decode("utf-8", errors="replace"))
        return "".join(pieces)

    def _decode(
        self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None, **kwargs
    ) -> str:
        ids = self._checked_ids(token_ids if isinstance(token_ids, (list, tuple)) else [token_ids], "token_ids")
        text = self._join(ids, skip=set(self.all_special_ids) if skip_special_tokens else ())
        if (
            clean_up_tokenization_spaces
            if clean_up_tokenization_spaces is not None
            else self.clean_up_tokenization_spaces
        ):
            text = self.clean_up_tokenization(text)
        return text

    # -- saving -----------------------------------------------------------------------------------------------------
    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        return ()  # the vocabulary is fixed: nothing to save

    def save_pretrained(self, save_directory, legacy_format=None, filename_prefix=None, push_to_hub=False, **kwargs):
        """As for any tokenizer, plus: ``add_bos_token`` / ``add_eos_token`` in tokenizer_config.json (the base class
        drops them), no load-time facts (``is_local``), ``auto_map`` pointing at the loader file
        ``tokenization_hf_seqmodels.py`` written beside it."""
        # push_to_hub: save here, then upload through the mixin (which saves again into a temporary folder)
        hub_kwargs = {
            k: kwargs.pop(k)
            for k in ("repo_id", "commit_message", "private", "token", "create_pr", "revision")
            if k in kwargs
        }
        # A class loaded with trust_remote_code is marked for an auto class; the base class would then copy this
        # module's source into the folder. The loader file below replaces that.
        self._auto_class = None
        try:
            files = super().save_pretrained(
                save_directory, legacy_format=legacy_format, filename_prefix=filename_prefix, **kwargs
            )
        finally:
            del self._auto_class
        if files is None:  # save_directory is a file: the base class logged an error
            return files
        config_file = os.path.join(
            save_directory, (filename_prefix + "-" if filename_prefix else "") + _TOKENIZER_CONFIG_FILE
        )
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
        for load_time_fact in ("is_local", "local_files_only"):  # recorded by from_pretrained, not settings
            config.pop(load_time_fact, None)
        config.update(
            add_bos_token=self.add_bos_token,
            add_eos_token=self.add_eos_token,
            auto_map={"AutoTokenizer": [f"{TOKENIZER_FILE[:-3]}.{type(self).__name__}", None]},
            tokenizer_class=type(self).__name__,
        )
        with open(config_file, "w", encoding="utf-8") as f:
            f.write(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        loader = os.path.join(save_directory, TOKENIZER_FILE)
        with open(loader, "w", encoding="utf-8") as f:
            f.write(_loader_source())
        if push_to_hub:
            repo_id = hub_kwargs.pop("repo_id", None) or os.path.basename(os.path.normpath(str(save_directory)))
            self.push_to_hub(repo_id, **hub_kwargs)
        return tuple(files) + (loader,)


def _loader_source() -> str:
    from hf_seqmodels.hub import _HEADER, _imports

    return _HEADER + _imports(ByteTokenizer)


def register_byte_tokenizer(config_class) -> None:
    """Make ``AutoTokenizer`` load a ``ByteTokenizer`` for models of ``config_class`` (and any folder whose
    tokenizer_config.json names ``ByteTokenizer``) without remote code."""
    AutoTokenizer.register(config_class, tokenizer_class=ByteTokenizer, exist_ok=True)


__all__ = ["BOS_ID", "EOS_ID", "PAD_ID", "ByteTokenizer", "register_byte_tokenizer"]
