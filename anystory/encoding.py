"""`SubjectEncoding`: everything generation needs from one subject, computed once (METHOD.md §1).

A subject is encoded once by the CLIP branch and the ReferenceNet; generation then needs neither
model. The record is plain tensors, stored as one safetensors file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from safetensors.torch import load as safetensors_from_bytes
from safetensors import safe_open

from .files import write_atomic

FORMAT_VERSION = 2  # 2: reference K/V may hold only the tokens inside the mask (`reference_inside_only`)


@dataclass
class SubjectEncoding:
    """One subject, encoded.

    - `clip_tokens` [T, text_dim]: E_i, the Subject QFormer's tokens (input of W'_k / W'_v in attn2).
    - `routing_embedding` [d_r]: R_i, the Routing QFormer's single query.
    - `reference_keys` / `reference_values`: per transformer block, in UNet execution order,
      K~_i^l and V~_i^l [tokens, hidden] already projected by that block's reference matrices;
      None for blocks that take no reference (block 1). Alternatively `reference_features` holds
      the unprojected ReferenceNet states G_i^l and the projection happens at every step.
    - `reference_mask` [h, w] in [0, 1]: the subject mask at the reference latent grid; reference
      tokens outside it are never attended to.
    - `reference_inside_only`: the reference K/V (or features) hold only the tokens inside the mask
      (`inside_tokens`, in grid order), as `encode_subject` stores them: the others are never
      attended to, so they are not kept (about half of a typical cut-out's square).
    - `encoder_id`: identity of the weights that made this encoding (stale when they change).
    """

    clip_tokens: torch.Tensor
    routing_embedding: torch.Tensor
    reference_keys: list[torch.Tensor | None] = field(default_factory=list)
    reference_values: list[torch.Tensor | None] = field(default_factory=list)
    reference_features: list[torch.Tensor | None] = field(default_factory=list)
    reference_mask: torch.Tensor | None = None
    reference_inside_only: bool = False
    encoder_id: str = ""
    info: dict = field(default_factory=dict)

    @property
    def has_reference(self) -> bool:
        return self.reference_mask is not None and (bool(self.reference_keys) or bool(self.reference_features))

    @property
    def num_blocks(self) -> int:
        return max(len(self.reference_keys), len(self.reference_features))

    def reference_kv(self, block: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Projected (K~, V~) of one block if they were cached at encode time."""
        if block < len(self.reference_keys) and self.reference_keys[block] is not None:
            return self.reference_keys[block], self.reference_values[block]
        return None

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SubjectEncoding:
        def move(t):
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return SubjectEncoding(
            clip_tokens=move(self.clip_tokens),
            routing_embedding=move(self.routing_embedding),
            reference_keys=[move(t) for t in self.reference_keys],
            reference_values=[move(t) for t in self.reference_values],
            reference_features=[move(t) for t in self.reference_features],
            reference_mask=move(self.reference_mask),
            reference_inside_only=self.reference_inside_only,
            encoder_id=self.encoder_id,
            info=dict(self.info),
        )

    # -- storage ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        tensors = {"clip_tokens": self.clip_tokens, "routing_embedding": self.routing_embedding}
        if self.reference_mask is not None:
            tensors["reference_mask"] = self.reference_mask
        for name, blocks in (
            ("key", self.reference_keys),
            ("value", self.reference_values),
            ("feature", self.reference_features),
        ):
            for block, tensor in enumerate(blocks):
                if tensor is not None:
                    tensors[f"reference.{block}.{name}"] = tensor
        return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    def _metadata(self) -> dict[str, str]:
        return {
            "format": "anystory.SubjectEncoding",
            "format_version": str(FORMAT_VERSION),
            "encoder_id": self.encoder_id,
            "num_blocks": str(self.num_blocks),
            "reference_inside_only": str(int(self.reference_inside_only)),
            "info": json.dumps(self.info),
        }

    def to_bytes(self) -> bytes:
        """The safetensors bytes of `save`, for storage that writes bytes itself."""
        return safetensors.torch.save(self.state_dict(), metadata=self._metadata())

    def save(self, path: str | os.PathLike) -> Path:
        """Write to a safetensors file (temp name + rename, so a crash never leaves half a file)."""
        return write_atomic(path, self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "encoding") -> SubjectEncoding:
        try:
            tensors = safetensors_from_bytes(data)  # safetensors: plain tensors, no pickle
            metadata = _read_metadata(data)
        except Exception as err:
            raise ValueError(f"{source} is not a readable SubjectEncoding: {err}") from err
        return cls._from_parts(tensors, metadata, source)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> SubjectEncoding:
        path = Path(path)
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # safetensors raises several types for truncated / foreign files
            raise ValueError(f"{path} is not a readable SubjectEncoding file: {err}") from err
        return cls._from_parts(tensors, metadata, str(path))

    @classmethod
    def _from_parts(cls, tensors: dict, metadata: dict, path: str) -> SubjectEncoding:
        if metadata.get("format") != "anystory.SubjectEncoding":
            raise ValueError(f"{path} is a safetensors file but not a SubjectEncoding")
        version = int(metadata.get("format_version", "0"))
        if version > FORMAT_VERSION:
            raise ValueError(f"{path} has encoding format {version}; this version reads up to {FORMAT_VERSION}")
        for required in ("clip_tokens", "routing_embedding"):
            if required not in tensors:
                raise ValueError(f"{path} lacks the tensor {required!r}")
        num_blocks = int(metadata.get("num_blocks", "0"))

        def per_block(name: str) -> list[torch.Tensor | None]:
            blocks = [tensors.get(f"reference.{b}.{name}") for b in range(num_blocks)]
            return blocks if any(t is not None for t in blocks) else []

        return cls(
            clip_tokens=tensors["clip_tokens"],
            routing_embedding=tensors["routing_embedding"],
            reference_keys=per_block("key"),
            reference_values=per_block("value"),
            reference_features=per_block("feature"),
            reference_mask=tensors.get("reference_mask"),
            reference_inside_only=metadata.get("reference_inside_only", "0") == "1",
            encoder_id=metadata.get("encoder_id", ""),
            info=json.loads(metadata.get("info", "{}")),
        )


def inside_tokens(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Indices (grid order) of the tokens of a `grid` whose area-share of `mask` [h, w] is >= 0.5:
    the reference tokens of a block that its subject's attention may use."""
    inside = F.adaptive_avg_pool2d(mask.float()[None, None], grid).flatten() >= 0.5
    return inside.nonzero().flatten()


def _read_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors byte string (8-byte little-endian header length, JSON)."""
    header_length = int.from_bytes(data[:8], "little")
    if header_length <= 0 or header_length > len(data) - 8:
        raise ValueError("truncated header")
    return json.loads(data[8 : 8 + header_length]).get("__metadata__", {}) or {}
