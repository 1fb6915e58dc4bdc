"""``MemoryBank``: the blocks of a hierarchical FFN memory, trainable in memory or read lazily from disk.

One block per cluster per level per memory layer, plus one *generic* block per level per layer (cluster id
``-1``, stored after the last cluster). A block of level ``l`` is one tensor ``[3, s_l, d]``: SwiGLU gate, up and
down weights, all in the ``[s, d]`` layout of :func:`hf_seqmodels.kernels.memory.memory_ffn`.

Two stores, one interface (:meth:`MemoryBank.fetch`):

- **trainable** (``MemoryBank(config, hidden_size, layer_ids)``): every block is its own ``nn.Parameter``, so an
  optimizer only sees the gradients of fetched blocks; blocks not fetched in a step have ``grad is None`` and torch's
  AdamW (any optimizer that skips ``None`` grads) neither updates nor decays them. Gate/up start at
  ``N(0, init_std)``, down at zero, so an untrained bank adds exactly nothing.
- **on disk** (``MemoryBank.from_pretrained(dir, ...)``, ``trainable=False``): nothing but the safetensors headers
  is read at load; each fetch reads the path's blocks from the shards straight into the fetched-weights buffer
  (``reader="pread"``: one scatter read ``preadv`` per block, no mapping, resident memory = what was fetched;
  ``reader="mmap"``: safetensors ``safe_open(...).get_slice``; the touched pages stay mapped and count in RSS as
  file-backed, reclaimable pages).

Files (next to the model's own, which stay unchanged): ``memory_bank-00001-of-0000N.safetensors`` shards and
``memory_bank.safetensors.index.json`` (format version, hidden size, layers, block sizes, branching, dtype, tensor ->
shard map, each shard's size and sha256). Tensor ``layer{i}.level{l}.part{p}`` holds the blocks of clusters
``p * P .. p * P + n - 1`` of that layer and level (``P`` = ``clusters_per_part[level]``), the generic block last.
Load checks every shard's presence, size, header and tensor shapes and dtypes against the index and the config, and
(``verify=True``) its sha256, raising ``MemoryBankError`` naming the mismatch; loading never writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct

import torch
from safetensors.torch import save_file
from torch import nn

from .config import MemoryBankConfig

BANK_INDEX = "memory_bank.safetensors.index.json"
_SHARD_RE = re.compile(r"^memory_bank-\d{5}-of-\d{5}\.safetensors$")
_DT = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
_DT_NAME = {v: k for k, v in _DT.items()}


class MemoryBankError(ValueError):
    """A bank on disk that does not match its index, its config or the model."""


def _block_bytes(s, d, dtype):
    return 3 * s * d * torch.empty((), dtype=dtype).element_size()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sha256(path, chunk=1 << 24):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def read_safetensors_header(path):
    """Parse a safetensors header without reading data. Returns ``(data_start, {name: (dtype, shape, (a, b))})``."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise MemoryBankError(f"bank shard {os.path.basename(path)} is truncated ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8 or n > 100_000_000:
            raise MemoryBankError(
                f"bank shard {os.path.basename(path)} is truncated or corrupt (header length {n} in a {size}-byte file)"
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise MemoryBankError(f"bank shard {os.path.basename(path)} has a corrupt header: {e}") from None
    header.pop("__metadata__", None)
    out, end = {}, 0
    for name, info in header.items():
        try:
            a, b = info["data_offsets"]
            out[name] = (info["dtype"], tuple(info["shape"]), (a, b))
        except (KeyError, TypeError, ValueError):
            raise MemoryBankError(f"bank shard {os.path.basename(path)} has a corrupt header entry {name!r}") from None
        end = max(end, b)
    if 8 + n + end != size:
        raise MemoryBankError(
            f"bank shard {os.path.basename(path)} is truncated or padded: header describes "
            f"{8 + n + end} bytes, file has {size}"
        )
    return 8 + n, out


class _DiskStore:
    """Reads single blocks out of safetensors shards (positioned reads or safetensors' mmap slices)."""

    def __init__(self, directory, meta, reader="pread"):
        if reader not in ("pread", "mmap"):
            raise ValueError(f"MemoryBank: `reader` must be 'pread' or 'mmap', got {reader!r}")
        self.directory, self.meta, self.reader = directory, meta, reader
        self.dtype = _DT[meta["dtype"]]
        self.headers, self._fds, self._handles = {}, {}, {}
        for fname in meta["files"]:
            self.headers[fname] = read_safetensors_header(os.path.join(directory, fname))

    def _fd(self, fname):
        if fname not in self._fds:
            self._fds[fname] = os.open(os.path.join(self.directory, fname), os.O_RDONLY)
        return self._fds[fname]

    def _handle(self, fname):
        if fname not in self._handles:
            from safetensors import safe_open

            self._handles[fname] = safe_open(os.path.join(self.directory, fname), framework="pt")
        return self._handles[fname]

    def read_block(self, layer, level, cluster, s, d):
        per = self.meta["clusters_per_part"][level]
        part, j = divmod(cluster, per)
        name = f"layer{layer}.level{level + 1}.part{part}"
        fname = self.meta["weight_map"][name]
        if self.reader == "mmap":
            return self._handle(fname).get_slice(name)[j]
        start, tensors = self.headers[fname]
        nbytes = _block_bytes(s, d, self.dtype)
        off = start + tensors[name][2][0] + j * nbytes
        buf = os.pread(self._fd(fname), nbytes, off)
        if len(buf) != nbytes:
            raise MemoryBankError(f"bank shard {fname} is truncated (short read of block {name}[{j}])")
        return torch.frombuffer(bytearray(buf), dtype=self.dtype).view(3, s, d)

    def read_into(self, layer, level, cluster, s, d, dsts):
        """Read one block straight into ``dsts`` (gate, up, down: three contiguous ``[s, d]`` views): a single
        scatter read (``preadv``), no intermediate tensor."""
        per = self.meta["clusters_per_part"][level]
        part, j = divmod(cluster, per)
        name = f"layer{layer}.level{level + 1}.part{part}"
        fname = self.meta["weight_map"][name]
        if self.reader == "mmap":
            blk = self._handle(fname).get_slice(name)[j]
            for k in range(3):
                dsts[k].copy_(blk[k])
            return
        start, tensors = self.headers[fname]
        nbytes = _block_bytes(s, d, self.dtype)
        off = start + tensors[name][2][0] + j * nbytes
        got = os.preadv(self._fd(fname), [t.view(torch.uint8).numpy() for t in dsts], off)
        if got != nbytes:
            raise MemoryBankError(f"bank shard {fname} is truncated (short read of block {name}[{j}])")

    def read_part(self, name):
        return self._handle(self.meta["weight_map"][name]).get_tensor(name)

    def close(self):
        for fd in self._fds.values():
            os.close(fd)
        self._fds, self._handles = {}, {}

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


class MemoryBank(nn.Module):
    """Blocks of a hierarchical FFN memory for the layers ``layer_ids`` of a model of width ``hidden_size``."""

    def __init__(
        self, config: MemoryBankConfig, hidden_size: int, layer_ids, dtype=torch.float32, device=None, _store=None
    ):
        super().__init__()
        self.config = config
        self.hidden_size = int(hidden_size)
        self.layer_ids = list(layer_ids)
        self.dtype_ = dtype
        self._store = _store
        self.blocks = nn.ModuleDict()
        if _store is None:
            std = config.init_std if config.init_std is not None else self.hidden_size**-0.5
            for i in self.layer_ids:
                levels = nn.ModuleDict()
                for l, s in enumerate(config.block_sizes):
                    if s == 0:
                        continue
                    params = []
                    for _ in range(config.clusters(l + 1) + 1):  # + the generic block
                        w = torch.empty(3, s, self.hidden_size, dtype=dtype, device=device)
                        nn.init.normal_(w[:2], std=std)
                        w[2].zero_()
                        params.append(nn.Parameter(w))
                    levels[f"level{l + 1}"] = nn.ParameterList(params)
                self.blocks[f"layer{i}"] = levels

    @property
    def trainable(self) -> bool:
        return self._store is None

    def extra_repr(self):
        where = "trainable" if self.trainable else f"on disk ({self._store.reader})"
        return f"layers={self.layer_ids}, block_sizes={self.config.block_sizes}, d={self.hidden_size}, {where}"

    # -- fetch ------------------------------------------------------------------------------------------------------
    def block(self, layer: int, level: int, cluster: int) -> torch.Tensor:
        """Block ``[3, s, d]`` of cluster ``cluster`` (``-1``: generic) at 0-based ``level`` of ``layer``."""
        n = self.config.clusters(level + 1)
        c = n if cluster < 0 else cluster
        if self._store is None:
            return self.blocks[f"layer{layer}"][f"level{level + 1}"][c]
        return self._store.read_block(layer, level, c, self.config.block_sizes[level], self.hidden_size)

    def fetch(self, layer: int, paths: torch.Tensor, device=None, dtype=None):
        """Weights ``(w_gate, w_up, w_down)``, each ``[B, sum(block_sizes), d]``, for the paths ``[B, levels]``."""
        rows = paths.tolist()
        if self._store is not None:  # read the blocks straight into one [3, B, S, d] buffer
            sizes = self.config.block_sizes
            W = torch.empty(3, len(rows), sum(sizes), self.hidden_size, dtype=self._store.dtype)
            for b, r in enumerate(rows):
                lo = 0
                for l, s in enumerate(sizes):
                    if s == 0:
                        continue
                    c = self.config.clusters(l + 1) if r[l] < 0 else r[l]
                    self._store.read_into(layer, l, c, s, self.hidden_size, [W[k, b, lo : lo + s] for k in range(3)])
                    lo += s
            if device is not None or dtype is not None:
                W = W.to(device=device, dtype=dtype)
            return W[0], W[1], W[2]
        per_level = []
        for l, s in enumerate(self.config.block_sizes):
            if s == 0:
                continue
            blocks = [self.block(layer, l, r[l]) for r in rows]
            per_level.append(torch.stack(blocks))
        w = torch.cat(per_level, dim=2) if len(per_level) > 1 else per_level[0]
        if device is not None or dtype is not None:
            w = w.to(device=device, dtype=dtype)
        return w[:, 0].contiguous(), w[:, 1].contiguous(), w[:, 2].contiguous()

    # -- save / load ------------------------------------------------------------------------------------------------
    def _parts(self, part_bytes):
        """Yield ``(name, level, lo, hi)`` for every stored part."""
        for i in self.layer_ids:
            for l, s in enumerate(self.config.block_sizes):
                if s == 0:
                    continue
                total = self.config.clusters(l + 1) + 1
                per = self._clusters_per_part(l, part_bytes)
                for p, lo in enumerate(range(0, total, per)):
                    yield i, f"layer{i}.level{l + 1}.part{p}", l, lo, min(total, lo + per)

    def _clusters_per_part(self, level, part_bytes):
        if self._store is not None:
            return self._store.meta["clusters_per_part"][level]
        s = self.config.block_sizes[level]
        if s == 0:
            return 1
        return max(1, part_bytes // _block_bytes(s, self.hidden_size, self.dtype_))

    def _part_tensor(self, layer, name, level, lo, hi):
        if self._store is not None:
            return self._store.read_part(name)
        plist = self.blocks[f"layer{layer}"][f"level{level + 1}"]
        return torch.stack([plist[c].detach() for c in range(lo, hi)]).cpu().contiguous()

    def save_pretrained(self, directory, max_shard_size: int = 2 << 30, part_size: int = 256 << 20) -> None:
        """Write the shards and the bank index into ``directory`` (temporary names, then renamed)."""
        os.makedirs(directory, exist_ok=True)
        cpp = [self._clusters_per_part(l, part_size) for l in range(self.config.levels)]
        groups, cur, cur_bytes = [], [], 0
        for spec in self._parts(part_size):
            _, _, l, lo, hi = spec
            nbytes = (hi - lo) * _block_bytes(self.config.block_sizes[l], self.hidden_size, self.dtype_)
            if cur and cur_bytes + nbytes > max_shard_size:
                groups.append(cur)
                cur, cur_bytes = [], 0
            cur.append(spec)
            cur_bytes += nbytes
        if cur:
            groups.append(cur)
        n = len(groups)
        weight_map, files, tmp_names = {}, {}, []
        for g, specs in enumerate(groups):
            fname = f"memory_bank-{g + 1:05d}-of-{n:05d}.safetensors"
            tensors = {name: self._part_tensor(i, name, l, lo, hi) for i, name, l, lo, hi in specs}
            tmp = os.path.join(directory, fname + ".tmp")
            save_file(tensors, tmp, metadata={"format": "pt"})
            os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates 0600 files; match the model's own files
            del tensors
            tmp_names.append((tmp, os.path.join(directory, fname)))
            files[fname] = {"size": os.path.getsize(tmp), "sha256": _sha256(tmp)}
            weight_map.update({name: fname for _, name, *_ in specs})
        meta = {
            "format_version": 1,
            "hidden_size": self.hidden_size,
            "layers": self.layer_ids,
            "block_sizes": list(self.config.block_sizes),
            "branching": self.config.branching,
            "dtype": _DT_NAME[self.dtype_],
            "clusters_per_part": cpp,
            "total_size": sum(f["size"] for f in files.values()),
            "files": files,
            "weight_map": weight_map,
        }
        if self._store is not None:
            self._store.close()  # the source may be the directory we write into
        for tmp, final in tmp_names:
            os.replace(tmp, final)
        with open(os.path.join(directory, BANK_INDEX + ".tmp"), "w") as f:
            json.dump(meta, f, indent=1)
        os.replace(os.path.join(directory, BANK_INDEX + ".tmp"), os.path.join(directory, BANK_INDEX))
        for old in os.listdir(directory):
            if _SHARD_RE.match(old) and old not in files:
                os.remove(os.path.join(directory, old))
        if self._store is not None:
            self._store = _DiskStore(directory, meta, self._store.reader)

    @staticmethod
    def read_index(directory) -> dict:
        path = os.path.join(directory, BANK_INDEX)
        if not os.path.isfile(path):
            raise MemoryBankError(f"no memory bank index {BANK_INDEX} in {directory}")
        try:
            with open(path) as f:
                return json.load(f)
        except json.JSONDecodeError as e:
            raise MemoryBankError(f"{BANK_INDEX} in {directory} is corrupt: {e}") from None

    @staticmethod
    def check_files(directory, meta, config: MemoryBankConfig, hidden_size=None, layer_ids=None, verify=True):
        """Every check a load does, without reading block data (unless ``verify``: sha256 of each shard)."""

        def mismatch(what, got, want):
            raise MemoryBankError(f"memory bank in {directory}: {what} is {got} in {BANK_INDEX} but {want} expected")

        if meta.get("format_version") != 1:
            mismatch("format_version", meta.get("format_version"), 1)
        if list(meta["block_sizes"]) != list(config.block_sizes):
            mismatch("block_sizes", meta["block_sizes"], f"{list(config.block_sizes)} (memory_config.json)")
        if meta["branching"] != config.branching:
            mismatch("branching", meta["branching"], f"{config.branching} (memory_config.json)")
        if hidden_size is not None and meta["hidden_size"] != hidden_size:
            mismatch("hidden_size", meta["hidden_size"], f"{hidden_size} (the model's width)")
        if layer_ids is not None and list(meta["layers"]) != list(layer_ids):
            mismatch("layers", meta["layers"], f"{list(layer_ids)} (config.layers on this model)")
        if meta.get("dtype") not in _DT:
            mismatch("dtype", meta.get("dtype"), f"one of {list(_DT)}")
        d, dt = meta["hidden_size"], meta["dtype"]
        for fname, info in meta["files"].items():
            path = os.path.join(directory, fname)
            if not os.path.isfile(path):
                raise MemoryBankError(f"memory bank shard {fname} listed in {BANK_INDEX} is missing from {directory}")
            size = os.path.getsize(path)
            if size != info["size"]:
                raise MemoryBankError(
                    f"memory bank shard {fname} has {size} bytes, {info['size']} expected (truncated or replaced)"
                )
            _, tensors = read_safetensors_header(path)
            for name, where in meta["weight_map"].items():
                if where != fname:
                    continue
                if name not in tensors:
                    raise MemoryBankError(f"memory bank shard {fname} lacks tensor {name}")
                m = re.match(r"layer(\d+)\.level(\d+)\.part(\d+)$", name)
                level = int(m.group(2)) - 1
                s = config.block_sizes[level] if level < config.levels else -1
                got_dt, shape, _ = tensors[name]
                if got_dt != dt or len(shape) != 4 or tuple(shape[1:]) != (3, s, d):
                    raise MemoryBankError(
                        f"memory bank tensor {name} in {fname} is {got_dt} {list(shape)}, "
                        f"expected {dt} [n, 3, {s}, {d}] for block size {s} at level {level + 1}"
                    )
            if verify and _sha256(path) != info["sha256"]:
                raise MemoryBankError(f"memory bank shard {fname} is corrupt (sha256 differs from {BANK_INDEX})")
        # every part the config implies must be mapped
        for i in meta["layers"]:
            for l, s in enumerate(config.block_sizes):
                if s == 0:
                    continue
                per = meta["clusters_per_part"][l]
                for p in range((config.clusters(l + 1) + 1 + per - 1) // per):
                    if f"layer{i}.level{l + 1}.part{p}" not in meta["weight_map"]:
                        raise MemoryBankError(f"memory bank in {directory} lacks layer{i}.level{l + 1}.part{p}")

    @classmethod
    def from_pretrained(
        cls,
        directory,
        config: MemoryBankConfig | None = None,
        hidden_size=None,
        layer_ids=None,
        trainable=False,
        reader="pread",
        verify=True,
        device=None,
    ):
        """Open the bank saved in ``directory``; ``trainable=True`` reads every block into parameters."""
        config = config or MemoryBankConfig.from_pretrained(directory)
        meta = cls.read_index(directory)
        cls.check_files(directory, meta, config, hidden_size, layer_ids, verify=verify)
        store = _DiskStore(directory, meta, reader)
        bank = cls(config, meta["hidden_size"], meta["layers"], dtype=_DT[meta["dtype"]], _store=store)
        if not trainable:
            return bank
        full = cls(config, meta["hidden_size"], meta["layers"], dtype=_DT[meta["dtype"]], device="meta")
        for i, name, l, lo, hi in bank._parts(0):
            part = store.read_part(name)
            plist = full.blocks[f"layer{i}"][f"level{l + 1}"]
            for c in range(lo, hi):
                plist[c] = nn.Parameter(part[c - lo].clone().to(device) if device else part[c - lo].clone())
        store.close()
        return full
