"""Load a pickled PyTorch checkpoint (a ``torch.save`` ``.pt``) without executing anything in it.

``torch.load(weights_only=True)`` rebuilds tensors and plain containers and refuses every other global. Some
published checkpoints also hold OmegaConf containers: the H-Net reference (goombalab/hnet, ``generate.py``) loads
its ``.pt`` inside ``torch.serialization.safe_globals([ListConfig])``, so its pickle names
``omegaconf.listconfig.ListConfig``. An OmegaConf container pickles as a NEWOBJ of its class plus a BUILD with its
``__dict__`` (``_metadata``, ``_parent``, ``_content``); that names, besides the container classes, the metadata and
node classes, ``typing.Any`` (and ``Dict``/``List`` for annotated containers), the builtin types used as
annotations and ``collections.defaultdict`` (the metadata's resolver cache).

:func:`load` allows exactly those names, mapped to inert stand-ins defined here (OmegaConf need not be installed and
is never imported), and turns every stand-in into plain data afterwards: a ListConfig becomes a ``list``, a
DictConfig a ``dict``, a value node its value. The stand-ins have no behaviour: NEWOBJ makes an empty instance,
BUILD stores the state dict as it is, and calling one (REDUCE) fails. Any other global (``os.system``,
``builtins.exec``, a class of some other package) is refused before unpickling starts, by a static scan of the pickle,
with a ``ValueError`` naming it.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections import OrderedDict

import torch

__all__ = ["OMEGACONF_GLOBALS", "load"]


class _Stub:
    """An inert stand-in for a pickled object: ``__setstate__`` keeps the state dict, nothing else happens."""

    __slots__ = ("state",)

    def __init__(self):  # REDUCE (a call with arguments) fails; NEWOBJ calls __new__ only
        self.state = {}

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise ValueError(f"{type(self).__name__}: expected a dict as pickled state, got {type(state).__name__}")
        self.state = state


class _ListConfig(_Stub):
    __slots__ = ()


class _DictConfig(_Stub):
    __slots__ = ()


class _ValueNode(_Stub):
    __slots__ = ()


class _Metadata(_Stub):
    __slots__ = ()


class _Annotation:
    """A type used as an OmegaConf annotation (``ref_type``, ``key_type``...): a name only, not callable."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self):
        return self.name


def _resolver_cache(*args):
    """``collections.defaultdict(dict)`` in OmegaConf metadata: an empty plain dict (its factory is ignored)."""
    if len(args) > 1:
        raise ValueError(f"collections.defaultdict: expected at most a factory, got {len(args)} arguments")
    return {}


_ANNOTATIONS = (
    "typing.Any",
    "typing.Dict",
    "typing.List",
    "builtins.dict",
    "builtins.list",
    "builtins.tuple",
    "builtins.int",
    "builtins.float",
    "builtins.str",
    "builtins.bool",
    "builtins.bytes",
)
_VALUE_NODES = ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode")

#: the globals allowed besides torch's own (``full.name`` -> stand-in)
OMEGACONF_GLOBALS = {
    "omegaconf.listconfig.ListConfig": _ListConfig,
    "omegaconf.dictconfig.DictConfig": _DictConfig,
    "omegaconf.base.Metadata": _Metadata,
    "omegaconf.base.ContainerMetadata": _Metadata,
    **{f"omegaconf.nodes.{name}": _ValueNode for name in _VALUE_NODES},
    **{name: _Annotation(name) for name in _ANNOTATIONS},
    "collections.defaultdict": _resolver_cache,
}
_SAFE_GLOBALS = [(obj, name) for name, obj in OMEGACONF_GLOBALS.items()]


def load(path, map_location="cpu"):
    """Unpickle the checkpoint at ``path`` (a ``torch.save`` file) with tensors on ``map_location``; OmegaConf
    containers come back as plain lists and dicts. Raises ``ValueError`` naming any other class or function the
    pickle refers to (nothing in the file is executed), ``FileNotFoundError`` if there is no such file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"safe_pickle.load: no checkpoint file at {path!r}")
    if tuple(int(v) for v in re.findall(r"\d+", torch.__version__)[:2]) < (2, 6):
        raise RuntimeError(
            f"safe_pickle.load needs torch >= 2.6 (safe globals under given names); this is torch {torch.__version__}"
        )
    is_zip = zipfile.is_zipfile(path)
    with torch.serialization.safe_globals(_SAFE_GLOBALS):
        if is_zip:  # torch.save's format since 1.6: name every unsafe global at once, before anything is built
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            if unsafe:
                raise ValueError(
                    f"{path}: refusing to unpickle {', '.join(sorted(unsafe))}: not in the allow-list "
                    f"(tensors, plain containers, OmegaConf containers)"
                )
        try:
            obj = torch.load(path, map_location=map_location, weights_only=True, mmap=is_zip)
        except Exception as err:  # the legacy format is only checked while unpickling
            raise ValueError(f"{path}: refused by the weights-only unpickler: {_reason(err)}") from None
    return _plain(obj, {})


def _reason(err: Exception) -> str:
    text = str(err)
    named = re.search(r"GLOBAL ([\w.]+)", text)
    if named:  # torch drops the "builtins." of builtins in this message
        name = named.group(1) if "." in named.group(1) else "builtins." + named.group(1)
        return f"{name} is not in the allow-list"
    text = text.split("WeightsUnpickler error:", 1)[-1].strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def _plain(obj, memo: dict):
    """``obj`` with every stand-in replaced by plain data (shared and cyclic references kept)."""
    key = id(obj)
    if key in memo:
        return memo[key]
    if isinstance(obj, (_ListConfig, _DictConfig)):
        content = getattr(obj, "state", {}).get("_content")
        if isinstance(content, (list, dict)):  # None and strings ("???", "${...}") stay as they are
            out = [] if isinstance(obj, _ListConfig) else {}
            memo[key] = out
            if isinstance(out, list):
                out.extend(_plain(v, memo) for v in content)
            else:
                out.update((_plain(k, memo), _plain(v, memo)) for k, v in content.items())
            return out
        memo[key] = content
        return content
    if isinstance(obj, _ValueNode):
        memo[key] = _plain(getattr(obj, "state", {}).get("_val"), memo)
        return memo[key]
    if isinstance(obj, _Metadata):
        memo[key] = out = {}
        out.update((k, _plain(v, memo)) for k, v in getattr(obj, "state", {}).items() if k != "_parent")
        return out
    if isinstance(obj, _Annotation):
        return obj.name
    if isinstance(obj, torch.Tensor):
        memo[key] = obj
        for name, value in list(vars(obj).items()):  # Python attributes pickled with a tensor or Parameter
            setattr(obj, name, _plain(value, memo))
        return obj
    if type(obj) in (dict, OrderedDict):
        out = type(obj)()
        memo[key] = out
        out.update((_plain(k, memo), _plain(v, memo)) for k, v in obj.items())
        for name, value in vars(obj).items() if type(obj) is OrderedDict else ():  # a state dict's `_metadata`
            setattr(out, name, _plain(value, memo))
        return out
    if type(obj) is list:
        out = []
        memo[key] = out
        out.extend(_plain(v, memo) for v in obj)
        return out
    if type(obj) is tuple:
        return tuple(_plain(v, memo) for v in obj)
    return obj
