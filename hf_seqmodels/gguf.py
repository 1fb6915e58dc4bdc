"""A fast GGUF header reader (no vocabulary parsing): what a ``.gguf`` file holds (its scalar and string metadata,
:func:`gguf_metadata`) and whether it is whole (:func:`check_gguf_file`: a truncated download is named as such, not
left to fail as a reshape error deep in transformers' loader). Reads only the header; loads no tensor.
"""

from __future__ import annotations

import os
import struct

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
# block size, bytes per block of the common GGML types (gguf's table is used when it is installed)
_GGML_SIZES = {
    0: (1, 4),
    1: (1, 2),
    2: (32, 18),
    3: (32, 20),
    6: (32, 22),
    7: (32, 24),
    8: (32, 34),
    9: (32, 36),
    10: (256, 84),
    11: (256, 110),
    12: (256, 144),
    13: (256, 176),
    14: (256, 210),
    15: (256, 292),
    24: (1, 1),
    25: (1, 2),
    26: (1, 4),
    27: (1, 8),
    28: (1, 8),
    30: (1, 2),
}


class _Reader:
    def __init__(self, f, path):
        self.f, self.path = f, path

    def read(self, n):
        data = self.f.read(n)
        if len(data) < n:
            raise EOFError
        return data

    def unpack(self, fmt):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self, keep=True):
        n = self.unpack("<Q")
        if not keep:
            self.f.seek(n, 1)
            return None
        return self.read(n).decode("utf-8", "replace")

    def value(self, kind, keep=True):
        if kind in _GGUF_SCALARS:
            return self.unpack(_GGUF_SCALARS[kind])
        if kind == _GGUF_STRING:
            return self.string(keep)
        if kind == _GGUF_ARRAY:
            item, n = self.unpack("<I"), self.unpack("<Q")
            if item in _GGUF_SCALARS and item != _GGUF_STRING:
                self.f.seek(n * struct.calcsize(_GGUF_SCALARS[item]), 1)
            else:
                for _ in range(n):
                    self.value(item, keep=False)
            return None  # arrays (vocabularies) are skipped
        raise ValueError(f"{self.path}: not a readable GGUF file (unknown metadata type {kind})")


def _gguf_header(path: str, tensors: bool):
    size = os.path.getsize(path)
    truncated = (
        f"{path}: the GGUF file is truncated ({size:,} bytes; an incomplete download or copy?): download it again"
    )
    meta, infos = {}, []
    with open(path, "rb") as f:
        r = _Reader(f, path)
        try:
            if r.read(4) != b"GGUF":
                raise ValueError(f"{path}: not a GGUF file (no GGUF magic number)")
            version, n_tensors, n_kv = r.unpack("<I"), r.unpack("<Q"), r.unpack("<Q")
            if version < 2:
                raise ValueError(f"{path}: GGUF version {version} is not supported (2 or later expected)")
            for _ in range(n_kv):
                key = r.string()
                kind = r.unpack("<I")
                value = r.value(kind)
                if value is not None:
                    meta[key] = value
            if tensors:
                for _ in range(n_tensors):
                    name = r.string()
                    dims = [r.unpack("<Q") for _ in range(r.unpack("<I"))]
                    infos.append((name, dims, r.unpack("<I"), r.unpack("<Q")))
            pos = f.tell()
        except (EOFError, struct.error, UnicodeDecodeError, OverflowError, MemoryError):
            raise ValueError(truncated) from None
    if pos > size:  # seeks past the end (skipped strings and arrays) read nothing and raise nothing
        raise ValueError(truncated)
    if tensors:
        align = int(meta.get("general.alignment", 32)) or 32
        start = -(-pos // align) * align
        try:
            from gguf.constants import GGML_QUANT_SIZES

            table = {int(k): v for k, v in GGML_QUANT_SIZES.items()}
        except Exception:  # noqa: BLE001
            table = _GGML_SIZES
        end = start
        for name, dims, kind, offset in infos:
            n = 1
            for d in dims:
                n *= d
            block, nbytes = table.get(kind, (1, 0))
            end = max(end, start + offset + n // block * nbytes)
        if end > size:
            raise ValueError(
                f"{path}: the GGUF file is truncated: {size:,} bytes, but its {len(infos)} tensors end at "
                f"byte {end:,} (an incomplete download or copy?): download it again"
            )
    return meta


def gguf_metadata(path: str) -> dict:
    """The scalar and string metadata of a GGUF file (arrays such as the vocabulary are skipped)."""
    return _gguf_header(path, tensors=False)


def check_gguf_file(path: str) -> dict:
    """Raise ``ValueError`` if ``path`` is not a GGUF file or is truncated (its tensors reach past its end); reads
    only the header. Returns the metadata."""
    return _gguf_header(path, tensors=True)
