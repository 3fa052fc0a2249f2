"""HuggingFace transformers integration: shared-prefix generation with stock ``generate()``.

Importing this module registers an attention implementation named ``"hydrogen"`` with
transformers' ``AttentionInterface`` (and a matching mask function with
``AttentionMaskInterface``), so ``model.set_attn_implementation("hydrogen")`` and
``from_pretrained(..., attn_implementation="hydrogen")`` both work.

Supported: transformers 5.17.x and 5.18.x; model families Llama, Mistral, Qwen2, Qwen3
(decoder-only, full causal attention). Everything else is refused with
:class:`HydrogenUnsupportedError`.

The README's "HuggingFace" section has a runnable example (tested by tests/test_readme.py).

How it works
------------
:class:`SharedPrefixCache` keeps, per layer, a list of frozen *levels* (the shared prefix
K/V, once per distinct prefix, right-padded with ``kv_lens`` and addressed through
``seq_to_prefix``) plus one growing per-sequence segment (right-padded, per-row lengths).
``update()`` writes each sequence's new tokens at that sequence's own length, and returns
the per-sequence segment tagged with the levels; the ``"hydrogen"`` attention function
recognises the tag and calls :func:`hydrogen_ops.hydragen_attention` on the pieces, so no
per-sequence copy of a prefix is ever made. Untagged keys (any other cache, or no cache)
go to transformers' own ``sdpa`` attention, which is exactly stock behaviour.

Towards ``generate()`` the cache looks like an ordinary left-padded batch whose columns are
``[prefix | pad + group prefix | pad + suffix | generated]``: ``get_seq_length()`` and
``get_mask_sizes()`` count those columns (prefix included), the 2D ``attention_mask`` marks
the pads, and RoPE positions come from the mask's cumulative sum exactly as in stock
``generate()``, so every sequence gets the positions of its unpadded self.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

import torch

import transformers
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import hydrogen_ops as _ops

__all__ = [
    "ATTN_IMPLEMENTATION",
    "SUPPORTED_TRANSFORMERS",
    "SUPPORTED_MODEL_TYPES",
    "HydrogenUnsupportedError",
    "SharedPrefixCache",
    "PreparedBatch",
    "enable",
    "disable",
    "enabled",
    "is_enabled",
    "prepare",
    "generate",
    "generate_hierarchical",
    "hydrogen_attention_forward",
]

ATTN_IMPLEMENTATION = "hydrogen"
SUPPORTED_TRANSFORMERS = ((5, 17), (5, 18))
SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})

# Families we know and refuse, with the reason.
_REFUSED_MODEL_TYPES = {
    "gemma2": "it uses attention-logit softcapping and alternating sliding-window layers",
    "gemma3": "it uses alternating sliding-window layers with per-layer RoPE and is not verified",
    "gemma3_text": "it uses alternating sliding-window layers with per-layer RoPE and is not verified",
    "gpt_oss": "it uses attention sinks (s_aux) and sliding-window layers",
}


class HydrogenUnsupportedError(NotImplementedError):
    """A feature that the hydrogen HF integration does not support (it never guesses)."""


def _check_transformers_version() -> None:
    if os.environ.get("HYDROGEN_HF_SKIP_VERSION_CHECK", "0") not in ("", "0"):
        return
    parts = transformers.__version__.split(".")
    try:
        major_minor = (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):  # pragma: no cover
        major_minor = None
    if major_minor not in SUPPORTED_TRANSFORMERS:
        supported = ", ".join(f"{a}.{b}.x" for a, b in SUPPORTED_TRANSFORMERS)
        raise ImportError(
            f"hydrogen_ops.hf supports transformers {supported}; found {transformers.__version__}. "
            "Set HYDROGEN_HF_SKIP_VERSION_CHECK=1 to try anyway (untested)."
        )


_check_transformers_version()


# --------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------


@dataclass
class _Level:
    """One frozen shared level of one layer: P prefixes, right-padded."""

    keys: torch.Tensor  # [P, Hkv, L, D]
    values: torch.Tensor
    kv_lens: Optional[torch.Tensor]  # int32 [P] or None (all L)
    lens_host: List[int]  # [P]
    seq_to_prefix: Optional[torch.Tensor]  # int32 [B] (current rows -> prefix) or None when P == 1
    rows_host: List[int]  # [B] current rows -> prefix, host copy

    def as_op_args(self):
        return (self.keys, self.values, self.kv_lens, self.seq_to_prefix)


@dataclass
class _AttnState:
    """What the attention function needs for one layer call; attached to the returned keys."""

    levels: List[_Level]
    suffix_keys: torch.Tensor
    suffix_values: torch.Tensor
    suffix_lens: Optional[torch.Tensor]
    suffix_lens_host: List[int]
    columns: int  # kv columns as seen by generate() after this update
    layer_idx: int
    check_mask: bool  # False while prepare() fills the cache (it passes no mask)

    def row_totals(self) -> List[int]:
        """Real (unpadded) number of keys of every sequence, prefix levels included."""
        totals = list(self.suffix_lens_host)
        for lv in self.levels:
            for b, p in enumerate(lv.rows_host):
                totals[b] += lv.lens_host[p]
        return totals


class SharedPrefixLayer(CacheLayerMixin):
    """Per-layer storage of :class:`SharedPrefixCache` (levels + one per-sequence segment)."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, batch_size: int = 1, capacity_hint: int = 0, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx
        self.levels: List[_Level] = []
        self.batch_size = batch_size
        self.capacity_hint = capacity_hint
        self.lens: List[int] = [0] * batch_size
        self.lens_t: Optional[torch.Tensor] = None
        self.level_columns = 0
        self.active_columns = 0

    # -- CacheLayerMixin API -----------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        return self.append(key_states, value_states, None)

    def get_seq_length(self) -> int:
        return self.level_columns + self.active_columns

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.__init__(1, self.capacity_hint, self.layer_idx)

    def reorder_cache(self, beam_idx) -> None:
        raise HydrogenUnsupportedError(_BEAM_MSG)

    # -- storage -----------------------------------------------------------------------
    def _ensure_capacity(self, need: int, like: torch.Tensor, value_like: torch.Tensor) -> None:
        cap = 0 if self.keys is None else self.keys.shape[-2]
        if need <= cap:
            return
        new_cap = max(need, self.capacity_hint, 2 * cap)
        B, H, _, D = like.shape
        # zero-filled: padding columns are never read, but keep them finite for any kernel.
        keys = like.new_zeros((B, H, new_cap, D))
        values = value_like.new_zeros((B, value_like.shape[1], new_cap, value_like.shape[-1]))
        if cap:
            used = max(self.lens)
            keys[:, :, :used] = self.keys[:, :, :used]
            values[:, :, :used] = self.values[:, :, :used]
        self.keys, self.values = keys, values

    def append(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        chunk_lens: Optional[Sequence[int]],
        check_mask: bool = True,
    ):
        B, _, q, _ = key_states.shape
        if B != self.batch_size:
            raise HydrogenUnsupportedError(
                f"SharedPrefixCache holds {self.batch_size} sequences but got a batch of {B}. The batch of a "
                "shared-prefix cache is fixed by hydrogen_ops.hf.prepare()/generate(); beam search, "
                "num_return_sequences inside model.generate() and other batch reshaping are not supported."
            )
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if key_states.dtype != self.dtype:
            raise HydrogenUnsupportedError(
                f"SharedPrefixCache layer {self.layer_idx} holds {self.dtype} but got {key_states.dtype}"
            )
        if chunk_lens is None:
            chunk = [q] * B
        else:
            chunk = [int(n) for n in chunk_lens]
            if len(chunk) != B or any(n < 0 or n > q for n in chunk):
                raise ValueError(f"invalid chunk lengths {chunk} for a chunk of {q} columns and {B} rows")
        new_lens = [a + n for a, n in zip(self.lens, chunk)]
        self._ensure_capacity(max(new_lens), key_states, value_states)

        if chunk_lens is None and len(set(self.lens)) == 1:
            start = self.lens[0]
            self.keys[:, :, start : start + q] = key_states
            self.values[:, :, start : start + q] = value_states
        elif chunk_lens is None:
            # every row gets q new tokens, each at its own length
            dev = self.keys.device
            rows = torch.arange(B, device=dev)[:, None]
            cols = torch.tensor(self.lens, device=dev)[:, None] + torch.arange(q, device=dev)[None, :]
            self.keys[rows, :, cols] = key_states.transpose(1, 2)
            self.values[rows, :, cols] = value_states.transpose(1, 2)
        else:
            # left-padded chunk: row b's valid tokens are its last chunk[b] columns
            for b, n in enumerate(chunk):
                if n:
                    a = self.lens[b]
                    self.keys[b, :, a : a + n] = key_states[b, :, q - n :]
                    self.values[b, :, a : a + n] = value_states[b, :, q - n :]

        self.lens = new_lens
        self.active_columns += q
        self.lens_t = torch.tensor(new_lens, dtype=torch.int32, device=self.keys.device)
        used = max(new_lens)
        k_view = self.keys[:, :, :used]
        v_view = self.values[:, :, :used]
        uniform = all(n == used for n in new_lens)
        k_view._hydrogen_state = _AttnState(
            levels=self.levels,
            suffix_keys=k_view,
            suffix_values=v_view,
            suffix_lens=None if uniform else self.lens_t,
            suffix_lens_host=new_lens,
            columns=self.get_seq_length(),
            layer_idx=self.layer_idx,
            check_mask=check_mask,
        )
        return k_view, v_view

    def start_segment(self, parents: List[int], capacity_hint: int) -> None:
        """Freeze the per-sequence segment into a level; start a new one with len(parents) rows."""
        if self.keys is not None and max(self.lens) > 0:
            used = max(self.lens)
            P = self.batch_size
            lens_host = list(self.lens)
            kv_lens = None if all(n == used for n in lens_host) else self.lens_t
            exact = used == self.keys.shape[-2]  # no spare capacity: keep the buffer as is
            self.levels.append(
                _Level(
                    keys=self.keys if exact else self.keys[:, :, :used].clone(),
                    values=self.values if exact else self.values[:, :, :used].clone(),
                    kv_lens=kv_lens,
                    lens_host=lens_host,
                    seq_to_prefix=None if P == 1 else torch.arange(P, dtype=torch.int32, device=self.keys.device),
                    rows_host=list(range(P)),
                )
            )
        for lv in self.levels:
            lv.rows_host = [lv.rows_host[p] for p in parents]
            if lv.keys.shape[0] == 1:
                lv.seq_to_prefix = None
            else:
                lv.seq_to_prefix = torch.tensor(lv.rows_host, dtype=torch.int32, device=lv.keys.device)
        self.level_columns += self.active_columns
        self.active_columns = 0
        self.keys = self.values = None
        self.batch_size = len(parents)
        self.lens = [0] * self.batch_size
        self.lens_t = None
        self.capacity_hint = capacity_hint


_BEAM_MSG = (
    "SharedPrefixCache does not support beam search, contrastive search, assisted/speculative decoding "
    "or any other generate() mode that reorders, repeats, selects or crops cached sequences. Use greedy "
    "search or sampling (num_beams=1, no assistant_model), or the stock DynamicCache."
)


class SharedPrefixCache(Cache):
    """A transformers ``Cache`` that stores each shared prefix's K/V once.

    Per layer it holds a list of frozen levels (level 0: the prefix shared by all; further
    levels: sub-prefixes shared by groups) and one per-sequence segment that grows during
    decoding. It reports lengths in the column space of the left-padded batch that
    ``generate()`` sees, so RoPE positions and generate's bookkeeping stay right.

    Build and fill it with :func:`prepare` (or :func:`generate`), which also gives the
    matching ``input_ids``/``attention_mask``. Only greedy search and sampling are supported.
    """

    is_compileable = False

    def __init__(self, config: Any = None, batch_size: int = 1, capacity_hint: int = 0):
        super().__init__(layers=[])
        self._batch_size = batch_size
        self._capacity_hint = capacity_hint
        self._chunk_lens: Optional[List[int]] = None
        self._filling = False
        self._row_prefix_tokens: List[int] = [0] * batch_size
        self.config = config

    # -- Cache API ---------------------------------------------------------------------
    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        while len(self.layers) <= layer_idx:
            self.layers.append(SharedPrefixLayer(self._batch_size, self._capacity_hint, len(self.layers)))
        return self.layers[layer_idx].append(key_states, value_states, self._chunk_lens, not self._filling)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        if layer_idx >= len(self.layers):
            return 0
        return self.layers[layer_idx].get_seq_length()

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.get_seq_length(layer_idx) + query_length, 0

    def get_max_length(self, layer_idx: Optional[int] = None) -> int:
        return -1

    def reset(self):
        self.layers = []
        self._batch_size = 1
        self._row_prefix_tokens = [0]

    def reorder_cache(self, beam_idx):
        raise HydrogenUnsupportedError(_BEAM_MSG)

    def batch_repeat_interleave(self, repeats: int):
        raise HydrogenUnsupportedError(_BEAM_MSG)

    def batch_select_indices(self, indices):
        raise HydrogenUnsupportedError(_BEAM_MSG)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove == 0:
            return
        raise HydrogenUnsupportedError(_BEAM_MSG)

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

    # -- shared-prefix API ---------------------------------------------------------------
    @contextlib.contextmanager
    def chunk_lengths(self, lens: Optional[Sequence[int]]):
        """Within this context, each update's chunk is left-padded: row b has ``lens[b]`` valid
        tokens. Used by :func:`prepare`, which feeds the model explicit positions and no mask."""
        previous = self._chunk_lens, self._filling
        self._chunk_lens = None if lens is None else [int(n) for n in lens]
        self._filling = True
        try:
            yield self
        finally:
            self._chunk_lens, self._filling = previous

    def start_segment(self, parents: Sequence[int], capacity_hint: int = 0) -> None:
        """Freeze what each layer holds per sequence into a shared level, and start a new
        per-sequence segment whose row ``i`` continues current row ``parents[i]``."""
        parents = [int(p) for p in parents]
        if any(p < 0 or p >= self._batch_size for p in parents):
            raise ValueError(f"parents must index the {self._batch_size} current rows, got {parents}")
        for layer in self.layers:
            layer.start_segment(parents, capacity_hint)
        self._batch_size = len(parents)
        self._capacity_hint = capacity_hint

    def kv_bytes(self) -> dict:
        """Bytes held: ``prefix`` (all shared levels), ``suffix`` (allocated per-sequence
        buffers), ``suffix_used`` (their valid part), and ``total``."""
        prefix = suffix = used = 0
        for layer in self.layers:
            for lv in layer.levels:
                prefix += lv.keys.nbytes + lv.values.nbytes
            if layer.keys is not None:
                suffix += layer.keys.nbytes + layer.values.nbytes
                per_tok_k = layer.keys[0, :, 0].nbytes
                per_tok_v = layer.values[0, :, 0].nbytes
                used += sum(layer.lens) * (per_tok_k + per_tok_v)
        return {"prefix": prefix, "suffix": suffix, "suffix_used": used, "total": prefix + suffix}


# --------------------------------------------------------------------------------------
# Attention + mask functions
# --------------------------------------------------------------------------------------


def _text_model_type(config) -> str:
    try:
        config = config.get_text_config(decoder=True)
    except Exception:  # pragma: no cover
        pass
    return getattr(config, "model_type", "")


def hydrogen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    is_causal: Optional[bool] = None,
    **kwargs,
):
    """The ``"hydrogen"`` attention function.

    Keys coming from a :class:`SharedPrefixCache` carry the cache's pieces and are computed
    with :func:`hydrogen_ops.hydragen_attention` (the 4D mask is then only used for a
    consistency check). Any other keys go to transformers' stock ``sdpa`` attention.
    """
    if kwargs.get("softcap") is not None:
        raise HydrogenUnsupportedError(
            "hydrogen attention does not support attention-logit softcapping (e.g. Gemma2); "
            "use attn_implementation='eager'."
        )
    if kwargs.get("s_aux") is not None:
        raise HydrogenUnsupportedError("hydrogen attention does not support attention sinks (s_aux).")

    state: Optional[_AttnState] = getattr(key, "_hydrogen_state", None)
    if state is None:
        # Not our cache: exact stock attention.
        if attention_mask is not None and attention_mask.shape[-1] != key.shape[-2]:
            raise RuntimeError(
                f"hydrogen attention: mask covers {attention_mask.shape[-1]} keys but got {key.shape[-2]}; "
                "the keys were modified after SharedPrefixCache.update() (unsupported model code)."
            )
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )

    model_type = _text_model_type(module.config)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise HydrogenUnsupportedError(_family_message(model_type))
    if dropout and module.training:
        raise HydrogenUnsupportedError("hydrogen attention is inference-only: attention dropout is not supported.")
    if is_causal is False or not getattr(module, "is_causal", True):
        raise HydrogenUnsupportedError("SharedPrefixCache needs causal (decoder) self-attention.")
    if query.shape[0] != state.suffix_keys.shape[0]:
        raise RuntimeError("hydrogen attention: query batch does not match the cache")
    sliding_window = kwargs.get("sliding_window")
    # columns >= every sequence's real length, so the exact per-row check is rarely needed
    if sliding_window is not None and state.columns > sliding_window and max(state.row_totals()) > sliding_window:
        raise HydrogenUnsupportedError(
            f"A sequence reached {max(state.row_totals())} tokens, beyond this layer's sliding window of "
            f"{sliding_window}: sliding-window attention is not supported by SharedPrefixCache."
        )
    if state.layer_idx == 0 and state.check_mask:
        _check_mask(state, attention_mask)

    out = _ops.hydragen_attention(
        query,
        [lv.as_op_args() for lv in state.levels],
        (state.suffix_keys, state.suffix_values, state.suffix_lens),
        causal=True,
        scale=scaling,
    )
    return out.transpose(1, 2), None


def _check_mask(state: _AttnState, attention_mask: Optional[torch.Tensor]) -> None:
    """Check that the mask given to the model agrees with what the cache holds (last query row)."""
    totals = state.row_totals()
    if attention_mask is None:
        ok = all(t == state.columns for t in totals)
    elif attention_mask.dtype == torch.bool and attention_mask.dim() == 4:
        seen = attention_mask[:, 0, -1, :].sum(-1).expand(len(totals))
        ok = bool(torch.equal(seen.cpu(), torch.tensor(totals, dtype=seen.dtype)))
    else:
        return
    if not ok:
        raise RuntimeError(
            "hydrogen attention: the attention_mask given to the model does not match the SharedPrefixCache "
            "(use hydrogen_ops.hf.prepare()/generate() to build input_ids and attention_mask)."
        )


def hydrogen_mask(*args, **kwargs):
    """Mask function for ``"hydrogen"``: stock sdpa's (used by the exact fallback path)."""
    return sdpa_mask(*args, **kwargs)


def _register() -> None:
    AttentionInterface.register(ATTN_IMPLEMENTATION, hydrogen_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, hydrogen_mask)


_register()


# --------------------------------------------------------------------------------------
# enable / disable
# --------------------------------------------------------------------------------------


def _family_message(model_type: str) -> str:
    why = _REFUSED_MODEL_TYPES.get(model_type, "it has not been verified")
    supported = ", ".join(sorted(SUPPORTED_MODEL_TYPES))
    return f"hydrogen attention does not support model_type={model_type!r}: {why}. Supported: {supported}."


def _check_model(model) -> None:
    config = model.config.get_text_config(decoder=True)
    model_type = getattr(config, "model_type", "")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise HydrogenUnsupportedError(_family_message(model_type))
    if getattr(config, "is_encoder_decoder", False) or not getattr(config, "is_causal", True):
        raise HydrogenUnsupportedError("hydrogen attention supports causal decoder-only models only.")
    for attr in ("attn_logit_softcapping",):
        if getattr(config, attr, None) is not None:
            raise HydrogenUnsupportedError(f"hydrogen attention does not support {attr}.")


def is_enabled(model) -> bool:
    return model.config._attn_implementation == ATTN_IMPLEMENTATION


def enable(model):
    """Switch ``model`` to ``attn_implementation="hydrogen"``; remembers what was there."""
    _check_model(model)
    _register()
    if is_enabled(model):
        return model
    previous = model.config._attn_implementation
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    if not is_enabled(model):
        model.set_attn_implementation(previous)
        raise HydrogenUnsupportedError(
            f"{type(model).__name__} does not dispatch attention through transformers' AttentionInterface."
        )
    model._hydrogen_previous_attn = previous
    return model


def disable(model):
    """Restore the attention implementation that was active before :func:`enable`."""
    if not is_enabled(model):
        return model
    previous = getattr(model, "_hydrogen_previous_attn", None) or "sdpa"
    model.set_attn_implementation(previous)
    if hasattr(model, "_hydrogen_previous_attn"):
        del model._hydrogen_previous_attn
    return model


@contextlib.contextmanager
def enabled(model):
    """Context manager: hydrogen attention inside, previous implementation restored on exit."""
    was_enabled = is_enabled(model)
    enable(model)
    try:
        yield model
    finally:
        if not was_enabled:
            disable(model)


# --------------------------------------------------------------------------------------
# prepare / generate
# --------------------------------------------------------------------------------------


def _as_token_list(ids, what: str) -> List[int]:
    if isinstance(ids, torch.Tensor):
        if ids.dim() == 2:
            if ids.shape[0] != 1:
                raise ValueError(f"{what} must be one sequence, got shape {tuple(ids.shape)}")
            ids = ids[0]
        if ids.dim() != 1:
            raise ValueError(f"{what} must be 1-D, got shape {tuple(ids.shape)}")
        return [int(t) for t in ids.tolist()]
    return [int(t) for t in ids]


def _as_token_lists(ids, what: str) -> List[List[int]]:
    if isinstance(ids, torch.Tensor):
        if ids.dim() == 1:
            ids = ids[None]
        return [[int(t) for t in row] for row in ids.tolist()]
    out = []
    for row in ids:
        out.append(_as_token_list(row, what))
    return out


@dataclass
class PreparedBatch:
    """A filled :class:`SharedPrefixCache` and the inputs to hand to ``model.generate``."""

    input_ids: torch.LongTensor  # [B, T]: per-stage blocks, each left-padded
    attention_mask: torch.LongTensor  # [B, T]
    cache: SharedPrefixCache
    prompt_lengths: List[int] = field(default_factory=list)  # unpadded prompt length per row

    def generate_kwargs(self) -> dict:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "past_key_values": self.cache}


def _pad_id(model, generate_kwargs: dict) -> int:
    gc = generate_kwargs.get("generation_config") or model.generation_config
    for cand in (
        generate_kwargs.get("pad_token_id"),
        getattr(gc, "pad_token_id", None),
        getattr(model.config, "pad_token_id", None),
        generate_kwargs.get("eos_token_id"),
        getattr(gc, "eos_token_id", None),
    ):
        if isinstance(cand, (list, tuple)):
            cand = cand[0] if cand else None
        if isinstance(cand, torch.Tensor):
            cand = int(cand.reshape(-1)[0])
        if cand is not None:
            return int(cand)
    return 0


@torch.no_grad()
def _prepare_tree(
    model,
    stages: List[List[List[int]]],
    parents: List[List[int]],
    pad_token_id: int = 0,
    max_new_tokens: int = 0,
) -> PreparedBatch:
    """Fill a cache for a tree of token blocks.

    ``stages[s][r]`` is the token list of row ``r`` at stage ``s``; ``parents[s][r]`` (s >= 1)
    is its parent row at stage ``s - 1``. Stage 0 has exactly one row (the shared prefix);
    the last stage has one row per generated sequence. Every stage but the last is
    stored as a shared level; the last one is per-sequence.
    """
    if len(stages[0]) != 1:
        raise ValueError("stage 0 must be a single shared prefix")
    stages = [[list(r) for r in st] for st in stages]
    if len(stages) == 1:  # no per-sequence stage: one sequence, empty suffix
        stages.append([[]])
        parents = list(parents) + [[0]]
    for s in range(1, len(stages)):
        if len(parents[s]) != len(stages[s]):
            raise ValueError("parents must give one parent per row")
    # ancestor of each final row at every stage
    n_final = len(stages[-1])
    anc = [[0] * n_final for _ in stages]
    anc[-1] = list(range(n_final))
    for s in range(len(stages) - 1, 0, -1):
        anc[s - 1] = [parents[s][r] for r in anc[s]]
    # every intermediate row must be non-empty, or its children would need its parent's token
    if sum(len(t) for t in stages[0]) == 0:
        raise ValueError("the shared prefix must not be empty")
    for s in range(1, len(stages) - 1):
        if any(len(t) == 0 for t in stages[s]):
            raise ValueError(f"stage {s} has an empty row; give non-empty group prefixes")
    # generate() needs at least one token per sequence to run: if a suffix is empty, move the
    # last token of every parent row into all of its children (uniformly, for all rows).
    if any(len(t) == 0 for t in stages[-1]):
        last = len(stages) - 2
        moved = [row[-1] for row in stages[last]]
        stages[last] = [row[:-1] for row in stages[last]]
        stages[-1] = [[moved[parents[-1][r]]] + t for r, t in enumerate(stages[-1])]

    device = model.device
    widths = [max(len(t) for t in st) for st in stages]
    # Full left-padded-per-stage batch as generate() will see it.
    ids_rows, mask_rows = [], []
    for b in range(n_final):
        ids, mask = [], []
        for s, st in enumerate(stages):
            toks = st[anc[s][b]]
            pad = widths[s] - len(toks)
            ids += [pad_token_id] * pad + toks
            mask += [0] * pad + [1] * len(toks)
        ids_rows.append(ids)
        mask_rows.append(mask)
    input_ids = torch.tensor(ids_rows, dtype=torch.long, device=device)
    attention_mask = torch.tensor(mask_rows, dtype=torch.long, device=device)
    prompt_lengths = [sum(m) for m in mask_rows]

    cache = SharedPrefixCache(model.config, batch_size=1)
    supports_ltk = getattr(model, "_supports_logits_to_keep", lambda: False)()
    prefix_len = [0]  # tokens before the current stage, per row of the current stage
    for s, st in enumerate(stages):
        if s > 0:
            final = s == len(stages) - 1
            cache.start_segment(parents[s], capacity_hint=(widths[s] + max_new_tokens + 1) if final else 0)
            prefix_len = [prefix_len[p] + len(stages[s - 1][p]) for p in parents[s]]
        final = s == len(stages) - 1
        rows = st
        width = widths[s] - (1 if final else 0)  # the last column is left to generate()
        if width <= 0:
            continue
        lens = [len(t) - (1 if final else 0) for t in rows]
        chunk_ids, pos = [], []
        for r, toks in enumerate(rows):
            toks = toks[: lens[r]]
            pad = width - lens[r]
            chunk_ids.append([pad_token_id] * pad + toks)
            pos.append([0] * pad + list(range(prefix_len[r], prefix_len[r] + lens[r])))
        chunk_ids_t = torch.tensor(chunk_ids, dtype=torch.long, device=device)
        pos_t = torch.tensor(pos, dtype=torch.long, device=device)
        kwargs = {"logits_to_keep": 1} if supports_ltk else {}
        with cache.chunk_lengths(None if all(n == width for n in lens) else lens):
            model(input_ids=chunk_ids_t, position_ids=pos_t, past_key_values=cache, use_cache=True, **kwargs)
    if cache.get_seq_length() != input_ids.shape[1] - 1:  # pragma: no cover - internal invariant
        raise RuntimeError("SharedPrefixCache column bookkeeping is inconsistent")
    return PreparedBatch(input_ids, attention_mask, cache, prompt_lengths)


def prepare(
    model,
    prefix_ids,
    suffix_ids=None,
    num_return_sequences: int = 1,
    *,
    pad_token_id: int = 0,
    max_new_tokens: int = 0,
) -> PreparedBatch:
    """Prefill the shared prefix once (batch 1), then every suffix (batched, any lengths).

    Rows are ordered suffix-major: row ``i * num_return_sequences + j`` is sample ``j`` of
    suffix ``i``. Returns a :class:`PreparedBatch`; pass ``**batch.generate_kwargs()`` to
    ``model.generate`` (greedy or sampling) with hydrogen attention enabled.
    """
    if num_return_sequences < 1:
        raise ValueError("num_return_sequences must be >= 1")
    prefix = _as_token_list(prefix_ids, "prefix_ids")
    suffixes = [[]] if suffix_ids is None else _as_token_lists(suffix_ids, "suffix_ids")
    final = [s for s in suffixes for _ in range(num_return_sequences)]
    return _prepare_tree(model, [[prefix], final], [None, [0] * len(final)], pad_token_id, max_new_tokens)


_UNSUPPORTED_GENERATE = {
    "assistant_model": "assisted decoding",
    "prompt_lookup_num_tokens": "prompt-lookup decoding",
    "penalty_alpha": "contrastive search",
    "custom_generate": "custom generation loops",
    "cache_implementation": "cache_implementation (the cache is a SharedPrefixCache)",
    "past_key_values": "past_key_values (the cache is built by hydrogen_ops.hf)",
    "attention_mask": "attention_mask (built by hydrogen_ops.hf)",
    "inputs_embeds": "inputs_embeds",
    "input_ids": "input_ids (pass prefix_ids/suffix_ids)",
    "inputs": "inputs (pass prefix_ids/suffix_ids)",
    "prefill_chunk_size": "prefill_chunk_size",
}


def _check_generate_kwargs(model, kwargs: dict) -> int:
    for key, what in _UNSUPPORTED_GENERATE.items():
        if kwargs.get(key) is not None:
            raise HydrogenUnsupportedError(f"hydrogen_ops.hf.generate does not support {what}.")
    gc = kwargs.get("generation_config") or model.generation_config

    def get(name, default=None):
        return kwargs[name] if name in kwargs else getattr(gc, name, default)

    if (get("num_beams", 1) or 1) > 1 or (get("num_beam_groups", 1) or 1) > 1:
        raise HydrogenUnsupportedError("hydrogen_ops.hf.generate does not support beam search (num_beams > 1).")
    if get("use_cache", True) is False:
        raise HydrogenUnsupportedError("hydrogen_ops.hf.generate needs use_cache=True.")
    if get("penalty_alpha") is not None and (get("top_k") or 0) > 1:
        raise HydrogenUnsupportedError("hydrogen_ops.hf.generate does not support contrastive search.")
    if get("prompt_lookup_num_tokens") is not None:
        raise HydrogenUnsupportedError("hydrogen_ops.hf.generate does not support prompt-lookup decoding.")
    max_new = get("max_new_tokens")
    return int(max_new) if max_new is not None else 0


def _run_generate(model, batch: PreparedBatch, kwargs: dict):
    return model.generate(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        past_key_values=batch.cache,
        num_return_sequences=1,
        **kwargs,
    )


def generate(model, prefix_ids, suffix_ids=None, num_return_sequences: int = 1, **generate_kwargs):
    """Shared-prefix generation through the model's own ``generate()``.

    Prefills ``prefix_ids`` once with batch 1, prefills the suffixes (``suffix_ids``: a list
    of token lists of any lengths, or None), then decodes ``len(suffix_ids) *
    num_return_sequences`` sequences with hydrogen attention. ``generate_kwargs`` go to
    ``model.generate`` (logits processors, stopping criteria, streamers, eos/pad ids, ...).

    Returns what ``model.generate`` returns. Row ``i * num_return_sequences + j`` is sample
    ``j`` of suffix ``i``; its prompt part is ``[prefix | pads + suffix]`` (pads where
    suffixes are shorter than the longest) followed by the new tokens.
    Only greedy search and sampling are supported (no beams, no assistant).
    """
    max_new = _check_generate_kwargs(model, generate_kwargs)
    pad = _pad_id(model, generate_kwargs)
    with enabled(model):
        batch = prepare(
            model, prefix_ids, suffix_ids, num_return_sequences, pad_token_id=pad, max_new_tokens=max_new
        )
        return _run_generate(model, batch, generate_kwargs)


def generate_hierarchical(
    model,
    shared_ids,
    group_ids,
    num_return_sequences: int = 1,
    suffix_ids=None,
    **generate_kwargs,
):
    """Two-level sharing: ``shared_ids`` (e.g. few-shot examples) shared by all, one
    sub-prefix per group (``group_ids[g]``, e.g. each problem, any lengths), and
    ``num_return_sequences`` samples per group. ``suffix_ids`` (optional) gives one suffix
    per group, appended after its sub-prefix for each of its samples.

    Row ``g * num_return_sequences + j`` is sample ``j`` of group ``g``. Returns what
    ``model.generate`` returns.
    """
    max_new = _check_generate_kwargs(model, generate_kwargs)
    pad = _pad_id(model, generate_kwargs)
    shared = _as_token_list(shared_ids, "shared_ids")
    groups = _as_token_lists(group_ids, "group_ids")
    if suffix_ids is None:
        suffixes = [[] for _ in groups]
    else:
        suffixes = _as_token_lists(suffix_ids, "suffix_ids")
        if len(suffixes) != len(groups):
            raise ValueError("give one suffix per group")
    final = [suffixes[g] for g in range(len(groups)) for _ in range(num_return_sequences)]
    final_parents = [g for g in range(len(groups)) for _ in range(num_return_sequences)]
    with enabled(model):
        batch = _prepare_tree(
            model,
            [[shared], groups, final],
            [None, [0] * len(groups), final_parents],
            pad,
            max_new,
        )
        return _run_generate(model, batch, generate_kwargs)
