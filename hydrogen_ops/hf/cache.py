"""The shared-prefix KV cache.

Per layer, :class:`SharedPrefixCache` holds a list of frozen *levels* (shared K/V, each stored
once per distinct span, right-padded, with ``kv_lens`` and a row -> span map
``seq_to_prefix``) and one per-sequence *segment* that grows while decoding (a preallocated
buffer, right-padded, with per-row lengths on the device). Nothing is ever copied per sequence
out of a level.

Towards ``generate()`` the cache looks like the stock left-padded batch it replaces:
``get_seq_length()`` and ``get_mask_sizes()`` count the columns of that batch, so the
``attention_mask`` and RoPE positions that ``generate()`` builds stay the stock ones.

The attention function finds the pieces through the ``hydrogen_cache`` attention kwarg
(``generate()`` passes it when hydrogen attention is enabled); the cache refuses to be
updated by any other attention, so a mismatch is an error, never a wrong result.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .checks import HydrogenUnsupportedError

ATTN_IMPLEMENTATION = "hydrogen"
# Name of the attention kwarg that carries the cache to the attention function.
CACHE_KWARG = "hydrogen_cache"

_REORDER_MSG = (
    "SharedPrefixCache does not support beam search, contrastive search, assisted/speculative decoding "
    "or any other generate() mode that reorders, repeats, selects or crops cached sequences. Use greedy "
    "search or sampling (num_beams=1, no assistant_model); stock generate() does so by itself when the "
    "cache is not passed in."
)


@dataclass
class _Level:
    """One frozen shared level of one layer: P spans, right-padded."""

    keys: torch.Tensor  # [P, Hkv, L, D]
    values: torch.Tensor
    kv_lens: Optional[torch.Tensor]  # int32 [P], None when all spans are L long
    rows: List[int]  # current row -> span (host)
    seq_to_prefix: Optional[torch.Tensor]  # int32 [B] device copy of rows; None when P == 1

    def as_op_args(self):
        return (self.keys, self.values, self.kv_lens, self.seq_to_prefix)

    def remap(self, parents: Sequence[int]) -> None:
        self.rows = [self.rows[p] for p in parents]
        self.seq_to_prefix = (
            None if self.keys.shape[0] == 1 else torch.tensor(self.rows, dtype=torch.int32, device=self.keys.device)
        )


class SharedPrefixLayer(CacheLayerMixin):
    """Per-layer storage of :class:`SharedPrefixCache`: frozen levels + one per-sequence segment."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx
        self.levels: List[_Level] = []
        self.lens: Optional[torch.Tensor] = None  # int32 [B]: valid keys of each row's segment
        self.lens_host: Optional[List[int]] = None  # host copy while prefilling (None once decoding)
        self.used = 0  # max over rows of the segment length (host), for the capacity check
        self.columns = 0  # columns of the stock batch generate() sees

    # -- CacheLayerMixin API -----------------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        raise HydrogenUnsupportedError("SharedPrefixLayer is updated through SharedPrefixCache.update()")

    def get_seq_length(self) -> int:
        return self.columns

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.columns + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        raise HydrogenUnsupportedError("a SharedPrefixCache cannot be reset; build a new one")

    def reorder_cache(self, beam_idx) -> None:
        raise HydrogenUnsupportedError(_REORDER_MSG)

    # -- storage -----------------------------------------------------------------------------
    def _reserve(self, need: int, capacity_hint: int, like_keys: torch.Tensor, like_values: torch.Tensor) -> None:
        """Make the segment buffers hold ``need`` columns (``like_*``: [B, H, *, D] templates)."""
        capacity = 0 if self.keys is None else self.keys.shape[-2]
        if self.keys is not None and need <= capacity:
            return
        new_capacity = max(need, capacity_hint, 2 * capacity)
        B = like_keys.shape[0]
        # zero-filled: columns past a row's length are never read, but stay finite for any kernel
        keys = like_keys.new_zeros((B, like_keys.shape[1], new_capacity, like_keys.shape[-1]))
        values = like_values.new_zeros((B, like_values.shape[1], new_capacity, like_values.shape[-1]))
        if capacity:
            keys[:, :, : self.used] = self.keys[:, :, : self.used]
            values[:, :, : self.used] = self.values[:, :, : self.used]
        self.keys, self.values = keys, values
        if self.lens is None:
            self.lens = torch.zeros(B, dtype=torch.int32, device=keys.device)
        if not torch.compiler.is_compiling():
            # fixed addresses: a compiled decode step mutates these in place without
            # recompiling, and CUDA graphs can replay over them
            for t in (self.keys, self.values, self.lens):
                torch._dynamo.mark_static_address(t)

    def reserve_segment(self, batch: int, capacity: int) -> None:
        """Allocate the per-sequence segment ahead of decoding (shapes taken from a level)."""
        if self.keys is None and self.levels:
            k, v = self.levels[-1].keys, self.levels[-1].values
            self._reserve(capacity, capacity, k.new_empty((batch, k.shape[1], 0, k.shape[-1])),
                          v.new_empty((batch, v.shape[1], 0, v.shape[-1])))

    def write(self, key_states, value_states, chunk: Optional["_Chunk"], capacity_hint: int) -> None:
        """Append ``key_states`` (``[B, H, q, D]``) to every row's segment at that row's length.

        ``chunk`` (prefill only) says which columns of a left-padded chunk are real tokens.
        """
        q = key_states.shape[-2]
        if chunk is None:
            self._reserve(self.used + q, capacity_hint, key_states, value_states)
            rows = torch.arange(key_states.shape[0], device=self.keys.device)[:, None]
            cols = self.lens[:, None].long() + torch.arange(q, device=self.keys.device)[None, :]
            self.keys[rows, :, cols] = key_states.transpose(1, 2)
            self.values[rows, :, cols] = value_states.transpose(1, 2)
            self.lens += q
            self.used += q
            self.lens_host = None
            self.columns += q
            return
        if self.lens_host is None:
            self.lens_host = [0] * key_states.shape[0]
        new_lens = [a + n for a, n in zip(self.lens_host, chunk.lens)]
        self._reserve(max(new_lens), capacity_hint, key_states, value_states)
        dst = self.lens[chunk.rows].long() + chunk.offsets
        self.keys[chunk.rows, :, dst] = key_states[chunk.rows, :, chunk.sources]
        self.values[chunk.rows, :, dst] = value_states[chunk.rows, :, chunk.sources]
        self.lens += chunk.lens_t
        self.lens_host = new_lens
        self.used = max(new_lens)

    def freeze(self, parents: Sequence[int]) -> None:
        """Turn the segment into a shared level; the next segment's row i continues row parents[i]."""
        if self.keys is not None and self.used > 0:
            lens = self.lens_host
            exact = self.used == self.keys.shape[-2]  # no spare capacity: keep the buffer as is
            keys = self.keys if exact else self.keys[:, :, : self.used].clone()
            values = self.values if exact else self.values[:, :, : self.used].clone()
            uniform = all(n == self.used for n in lens)
            P = keys.shape[0]
            self.levels.append(
                _Level(keys, values, None if uniform else self.lens.clone(), list(range(P)), None)
            )
        for level in self.levels:
            level.remap(parents)
        self.keys = self.values = self.lens = None
        self.lens_host = None
        self.used = 0


@dataclass
class _Chunk:
    """Where the real tokens of a left-padded prefill chunk go (the same for every layer)."""

    lens: List[int]  # real tokens per row (host)
    lens_t: torch.Tensor  # int32 [B]
    rows: torch.Tensor  # long [N]: row of each real token
    sources: torch.Tensor  # long [N]: its column in the chunk
    offsets: torch.Tensor  # long [N]: its index among its row's real tokens

    @classmethod
    def left_padded(cls, lens: Sequence[int], width: int, device) -> "_Chunk":
        lens = [int(n) for n in lens]
        if any(n < 0 or n > width for n in lens):
            raise ValueError(f"chunk lengths {lens} must lie in [0, {width}]")
        rows = [b for b, n in enumerate(lens) for _ in range(n)]
        offsets = [i for n in lens for i in range(n)]
        sources = [width - n + i for n in lens for i in range(n)]

        def as_long(xs):
            return torch.tensor(xs, dtype=torch.long, device=device)

        return cls(lens, torch.tensor(lens, dtype=torch.int32, device=device), as_long(rows), as_long(sources), as_long(offsets))


class SharedPrefixCache(Cache):
    """A transformers ``Cache`` that stores each shared span's K/V once.

    Per layer it holds frozen levels (level 0: the span shared by all rows; deeper levels:
    spans shared by groups of rows) and one per-sequence segment that grows during decoding.
    It reports lengths in the column space of the left-padded batch ``generate()`` sees.

    Stock ``model.generate()`` builds and fills one by itself when hydrogen attention is
    enabled and the batch shares a prefix; :func:`hydrogen_ops.hf.prepare` builds one by hand.
    Only greedy search and sampling can use it. A cache serves one ``generate()`` call.
    """

    is_compileable = False

    def __init__(self, config: Any = None, batch_size: int = 1, capacity_hint: int = 0):
        super().__init__(layers=[])
        self.config = config
        self._batch_size = batch_size
        self._capacity_hint = capacity_hint
        self._chunk: Optional[_Chunk] = None
        self._awaiting: Optional[int] = None  # layer updated whose attention has not run yet
        self._claimed = False  # a generate() call has started decoding from this cache

    # -- Cache API ---------------------------------------------------------------------------
    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        self._check_dispatch(layer_idx)
        B = key_states.shape[0]
        if B != self._batch_size:
            raise HydrogenUnsupportedError(
                f"SharedPrefixCache holds {self._batch_size} sequences but got a batch of {B}. {_REORDER_MSG}"
            )
        while len(self.layers) <= layer_idx:
            self.layers.append(SharedPrefixLayer(len(self.layers)))
        layer = self.layers[layer_idx]
        if not layer.is_initialized:
            layer.lazy_initialization(key_states, value_states)
        if key_states.dtype != layer.dtype:
            raise HydrogenUnsupportedError(f"SharedPrefixCache layer {layer_idx} holds {layer.dtype}, got {key_states.dtype}")
        layer.write(key_states, value_states, self._chunk, self._capacity_hint)
        self._awaiting = layer_idx
        return layer.keys, layer.values

    def _check_dispatch(self, layer_idx: int) -> None:
        attn = getattr(self.config, "_attn_implementation", ATTN_IMPLEMENTATION)
        if attn != ATTN_IMPLEMENTATION:
            raise RuntimeError(
                f"SharedPrefixCache needs hydrogen attention, but the model uses attn_implementation={attn!r}: "
                "call hydrogen_ops.hf.enable(model) (or use `with hydrogen_ops.hf.enabled(model):`) first."
            )
        if self._awaiting is not None:
            missed, self._awaiting = self._awaiting, None
            raise RuntimeError(
                f"SharedPrefixCache: the attention of layer {missed} did not read "
                f"this cache. Pass {CACHE_KWARG}=cache to the model call along with the cache (model.generate() "
                "does so by itself), and use a model whose attention goes through transformers' AttentionInterface."
            )

    def attention_done(self) -> None:
        """Called by the attention function once it has read the layer just updated."""
        self._awaiting = None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        if layer_idx >= len(self.layers):
            return 0
        return self.layers[layer_idx].columns

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.get_seq_length(layer_idx) + query_length, 0

    def get_max_length(self, layer_idx: Optional[int] = None) -> int:
        return -1

    def reset(self):
        raise HydrogenUnsupportedError("a SharedPrefixCache cannot be reset; build a new one")

    def reorder_cache(self, beam_idx):
        raise HydrogenUnsupportedError(_REORDER_MSG)

    def batch_repeat_interleave(self, repeats: int):
        raise HydrogenUnsupportedError(_REORDER_MSG)

    def batch_select_indices(self, indices):
        raise HydrogenUnsupportedError(_REORDER_MSG)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove == 0:
            return
        raise HydrogenUnsupportedError(_REORDER_MSG)

    def activate_past_recording(self):
        pass

    @property
    def is_croppable(self) -> bool:
        return False

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def is_initialized(self) -> bool:
        return len(self.layers) > 0 and all(layer.is_initialized for layer in self.layers)

    # -- shared-prefix API ---------------------------------------------------------------------
    @contextlib.contextmanager
    def chunk_lengths(self, lens: Sequence[int], width: int, device):
        """Within this context, each update's chunk is left-padded ``width`` columns wide and
        row b's real tokens are its last ``lens[b]`` columns (the prefill feeds explicit
        positions; the columns ``generate()`` sees are set by :meth:`set_columns`)."""
        previous = self._chunk
        self._chunk = _Chunk.left_padded(lens, width, device)
        try:
            yield self
        finally:
            self._chunk = previous

    def start_segment(self, parents: Sequence[int], capacity_hint: int = 0) -> None:
        """Freeze what each layer holds per sequence into a shared level, and start a new
        per-sequence segment whose row ``i`` continues current row ``parents[i]``."""
        parents = [int(p) for p in parents]
        if any(p < 0 or p >= self._batch_size for p in parents):
            raise ValueError(f"parents must index the {self._batch_size} current rows, got {parents}")
        for layer in self.layers:
            layer.freeze(parents)
        self._batch_size = len(parents)
        self._capacity_hint = capacity_hint

    def reserve_segment(self, capacity: int) -> None:
        """Allocate every layer's per-sequence segment for ``capacity`` tokens per row now,
        so that decoding never reallocates (a compiled step then sees fixed buffers)."""
        self._capacity_hint = max(self._capacity_hint, capacity)
        for layer in self.layers:
            layer.reserve_segment(self._batch_size, self._capacity_hint)

    def set_columns(self, columns: int) -> None:
        """Set the number of columns of the stock batch that the cache stands for."""
        for layer in self.layers:
            layer.columns = int(columns)

    def claim(self) -> None:
        """Mark the cache as used by one generate() call; a second call is refused."""
        if self._claimed:
            raise RuntimeError(
                "This SharedPrefixCache (PreparedBatch) was already used by a generate() call and now holds "
                "that call's tokens; build a new one with hydrogen_ops.hf.prepare() for each call."
            )
        self._claimed = True

    def kv_bytes(self) -> dict:
        """Bytes held: ``prefix`` (all shared levels), ``suffix`` (allocated per-sequence
        buffers), ``suffix_used`` (their valid part), and ``total``."""
        prefix = suffix = used = 0
        for layer in self.layers:
            for level in layer.levels:
                prefix += level.keys.nbytes + level.values.nbytes
            if layer.keys is not None:
                suffix += layer.keys.nbytes + layer.values.nbytes
                per_token = layer.keys[0, :, 0].nbytes + layer.values[0, :, 0].nbytes
                used += int(layer.lens.sum()) * per_token
        return {"prefix": prefix, "suffix": suffix, "suffix_used": used, "total": prefix + suffix}
