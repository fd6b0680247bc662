"""The parameter manifest: one flat index space shared by ground (torch) and edge (ONNX).

Every trainable parameter of the student gets a contiguous slice of one float32 vector.
Patches address that vector by index, the edge writes slices of it into ONNX initializers,
and digests are taken over its bytes, so both sides must agree on this layout exactly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

FLAT_DTYPE = np.dtype('<f4')


@dataclass(frozen=True)
class ParameterEntry:
    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def stop(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class ParameterManifest:
    """Ordered parameter names and shapes with their offsets into the flat vector."""

    entries: tuple[ParameterEntry, ...]

    @classmethod
    def from_shapes(cls, named_shapes) -> ParameterManifest:
        """Lay out (name, shape) pairs back to back in the given order."""
        entries, offset = [], 0
        for name, shape in named_shapes:
            entry = ParameterEntry(str(name), tuple(int(d) for d in shape), offset)
            entries.append(entry)
            offset = entry.stop
        names = [e.name for e in entries]
        if len(set(names)) != len(names):
            raise ValueError('parameter names in a manifest must be unique')
        return cls(tuple(entries))

    @classmethod
    def from_module(cls, module) -> ParameterManifest:
        """Manifest of a torch module's trainable parameters, in named_parameters() order."""
        return cls.from_shapes(
            (name, tuple(p.shape)) for name, p in module.named_parameters() if p.requires_grad
        )

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    @property
    def total_size(self) -> int:
        return self.entries[-1].stop if self.entries else 0

    def entry(self, name: str) -> ParameterEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(name)

    def split(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Return views of the flat vector, one per parameter, in its own shape."""
        self.check_vector(flat)
        return {e.name: flat[e.offset:e.stop].reshape(e.shape) for e in self.entries}

    def join(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Concatenate per-parameter arrays into a new flat vector."""
        flat = np.empty(self.total_size, FLAT_DTYPE)
        for e in self.entries:
            value = np.asarray(arrays[e.name], dtype=FLAT_DTYPE)
            if value.shape != e.shape:
                raise ValueError(f'{e.name}: shape {value.shape} != manifest {e.shape}')
            flat[e.offset:e.stop] = value.ravel()
        return flat

    def check_vector(self, flat: np.ndarray) -> None:
        if flat.dtype != FLAT_DTYPE or flat.shape != (self.total_size,):
            raise ValueError(
                f'flat vector must be {FLAT_DTYPE} of shape ({self.total_size},), '
                f'got {flat.dtype} {flat.shape}')

    def to_json(self) -> str:
        return json.dumps(
            [{'name': e.name, 'shape': list(e.shape), 'offset': e.offset} for e in self.entries])

    @classmethod
    def from_json(cls, text: str) -> ParameterManifest:
        """Parse and validate a manifest; offsets must be the contiguous layout."""
        items = json.loads(text)
        manifest = cls.from_shapes((item['name'], item['shape']) for item in items)
        for item, entry in zip(items, manifest.entries, strict=True):
            if int(item['offset']) != entry.offset:
                raise ValueError(f"{entry.name}: offset {item['offset']} is not contiguous")
        return manifest

    def model_id(self, architecture: str) -> str:
        """Identify architecture + layout: equal ids mean patches are interchangeable."""
        h = hashlib.sha256(architecture.encode() + b'\0' + self.to_json().encode())
        return f'{architecture}-{h.hexdigest()[:16]}'


def vector_digest(flat: np.ndarray) -> bytes:
    """SHA-256 of the flat vector's little-endian float32 bytes (the mirror invariant)."""
    return hashlib.sha256(np.ascontiguousarray(flat, dtype=FLAT_DTYPE).tobytes()).digest()


def module_to_vector(module, manifest: ParameterManifest) -> np.ndarray:
    """Copy a torch module's parameters into a new flat vector."""
    params = dict(module.named_parameters())
    return manifest.join({n: params[n].detach().cpu().numpy() for n in manifest.names})


def vector_to_module(flat: np.ndarray, module, manifest: ParameterManifest) -> None:
    """Write a flat vector into a torch module's parameters in place."""
    import torch

    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in manifest.split(flat).items():
            params[name].copy_(torch.from_numpy(np.array(value)))
