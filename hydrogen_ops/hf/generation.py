"""Shared-prefix generation through stock ``model.generate()``.

When hydrogen attention is enabled, ``generate()``'s prefill step is taken over (see
:func:`install_generate_hook`): the prompt rows are put in a radix tree
(:mod:`hydrogen_ops.hf.trie`), each shared span is prefilled once (batched per tree level),
each row's own tail once, and a :class:`SharedPrefixCache` replaces the stock cache. The rest
of ``generate()`` is stock: logits processors, stopping criteria, streamers, sampling, and the
returned rows (the stock left-padded layout). Where sharing does not apply, stock attention
runs and the reason is logged once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
from transformers.generation.utils import GenerationMixin

from ._compat import cache_argument
from .attention import enabled, is_enabled, log_once
from .cache import CACHE_KWARG, SharedPrefixCache
from .checks import HydrogenUnsupportedError, sharing_blocker
from .trie import SharingPlan, plan_sharing

# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _real_tokens(ids: List[int], mask: Optional[List[int]], what: str) -> List[int]:
    if mask is None:
        return ids
    if len(mask) != len(ids):
        raise ValueError(f"{what}: attention_mask has {len(mask)} columns, input_ids {len(ids)}")
    real = [i for i, m in enumerate(mask) if m]
    if real and real[-1] - real[0] + 1 != len(real):
        raise ValueError(f"{what}: attention_mask must mark one contiguous span per row (left or right padding)")
    return [ids[i] for i in real]


def _token_rows(ids, what: str) -> List[List[int]]:
    """Rows of real tokens from a list, a list of lists, a 1-D/2-D tensor, or a tokenizer's
    ``BatchEncoding``/dict with ``input_ids`` and ``attention_mask`` (pads dropped)."""
    mask = None
    if isinstance(ids, Mapping):
        if "input_ids" not in ids:
            raise ValueError(f"{what}: a mapping must hold 'input_ids' (and optionally 'attention_mask')")
        mask = ids.get("attention_mask")
        ids = ids["input_ids"]
    if isinstance(ids, torch.Tensor):
        if ids.dim() not in (1, 2):
            raise ValueError(f"{what} must be 1-D or 2-D, got shape {tuple(ids.shape)}")
        ids = ids.tolist()
    if isinstance(mask, torch.Tensor):
        mask = mask.tolist()
    ids = list(ids)
    if not ids or not isinstance(ids[0], (list, tuple, torch.Tensor)):  # a single row
        ids = [ids]
        mask = None if mask is None else [mask]
    rows = []
    for r, row in enumerate(ids):
        row = [int(t) for t in (row.tolist() if isinstance(row, torch.Tensor) else row)]
        rows.append(_real_tokens(row, None if mask is None else [int(m) for m in mask[r]], what))
    return rows


def _one_row(ids, what: str) -> List[int]:
    rows = _token_rows(ids, what)
    if len(rows) != 1:
        raise ValueError(f"{what} must be one sequence, got {len(rows)}")
    return rows[0]


def _left_padded(rows: Sequence[Sequence[int]], pad_token_id: int, device):
    width = max(len(r) for r in rows)
    if width == 0:
        raise ValueError("every prompt is empty")
    ids = [[pad_token_id] * (width - len(r)) + list(r) for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    return (
        torch.tensor(ids, dtype=torch.long, device=device),
        torch.tensor(mask, dtype=torch.long, device=device),
    )


def _rows_of_batch(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> Optional[List[List[int]]]:
    """Real tokens of each row of a stock left-padded batch; None if it is not left-padded."""
    ids = input_ids.tolist()
    if attention_mask is None:
        return ids
    mask = attention_mask.tolist()
    rows = []
    for row, m in zip(ids, mask):
        n = sum(1 for x in m if x)
        if n == 0 or any(x == 0 for x in m[len(m) - n :]):
            return None
        rows.append(row[len(row) - n :])
    return rows


# --------------------------------------------------------------------------------------------
# Prefill of a sharing plan
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def _prefill_chunk(model, cache: SharedPrefixCache, spans: List[List[int]], starts: List[int]) -> None:
    """Run the model over one level (or the tails): span i at positions starts[i]..., left-padded."""
    width = max(len(s) for s in spans)
    if width == 0:
        return
    device = model.device
    ids = [[0] * (width - len(s)) + list(s) for s in spans]
    pos = [[0] * (width - len(s)) + list(range(a, a + len(s))) for s, a in zip(spans, starts)]
    kwargs = {"logits_to_keep": 1} if model._supports_logits_to_keep() else {}
    # Prefill chunks differ in shape and layout from call to call: keep them out of a compiled
    # forward (compilation is for the decode step, whose shapes repeat).
    with torch.compiler.set_stance("force_eager"), cache.chunk_lengths([len(s) for s in spans], width, device):
        model(
            input_ids=torch.tensor(ids, dtype=torch.long, device=device),
            position_ids=torch.tensor(pos, dtype=torch.long, device=device),
            use_cache=True,
            **{cache_argument(model): cache, CACHE_KWARG: cache},
            **kwargs,
        )


def _fill_cache(model, plan: SharingPlan, columns: int, new_tokens: int) -> SharedPrefixCache:
    """Prefill every level of ``plan`` once and every row's tail once."""
    # per-sequence room: the tails, the prompt's last token (fed by generate()) and the new tokens
    capacity = max(len(t) for t in plan.tails) + 1 + max(new_tokens, 0)
    if plan.shared:
        cache = SharedPrefixCache(model.config, batch_size=len(plan.levels[0]))
        for d, level in enumerate(plan.levels):
            if d:
                cache.start_segment(plan.parents[d])
            _prefill_chunk(model, cache, level, plan.level_starts[d])
        cache.start_segment(plan.tail_parents, capacity_hint=capacity)
    else:
        cache = SharedPrefixCache(model.config, batch_size=len(plan.tails), capacity_hint=capacity)
    _prefill_chunk(model, cache, plan.tails, plan.tail_starts)
    cache.reserve_segment(capacity)
    cache.set_columns(columns)
    return cache


def _plan(model, rows: List[List[int]], new_tokens: int) -> tuple[Optional[SharingPlan], str]:
    """Plan for stock rows (their last token is left to generate()), or None and why not."""
    if len(rows) < 2:
        return None, "a single sequence has no prefix to share"
    blocker = sharing_blocker(model, max(len(r) for r in rows) + max(new_tokens, 0))
    if blocker is not None:
        return None, f"the model's attention differs for shared prefixes: {blocker}"
    plan = plan_sharing([r[:-1] for r in rows])
    if not plan.shared:
        return None, "the prompts share no leading tokens"
    return plan, ""


# --------------------------------------------------------------------------------------------
# The generate() hook
# --------------------------------------------------------------------------------------------

# model_kwargs that the shared prefill reproduces (anything else, e.g. images, goes stock)
_PLAIN_KWARGS = frozenset({"attention_mask", "position_ids", "use_cache", "logits_to_keep", CACHE_KWARG})
_SHARED_MODES = ("greedy_search", "sample")


def _why_not_shared(model, generation_config, model_kwargs: dict, cache_arg: str) -> Optional[str]:
    mode = generation_config.get_generation_mode()
    if str(getattr(mode, "value", mode)) not in _SHARED_MODES or getattr(generation_config, "is_assistant", False):
        return f"generation mode {getattr(mode, 'value', mode)!r} (only greedy search and sampling share prefixes)"
    if generation_config.use_cache is False:
        return "use_cache=False"
    if generation_config.prefill_chunk_size is not None:
        return "prefill_chunk_size is set"
    if generation_config.output_attentions or generation_config.output_hidden_states:
        return "output_attentions/output_hidden_states ask for per-token outputs of the whole prompt"
    if getattr(generation_config, "cache_implementation", None) is not None:
        return f"cache_implementation={generation_config.cache_implementation!r} was asked for"
    given = model_kwargs.get(cache_arg)
    if given is not None and given.get_seq_length() > 0:
        return "a non-empty cache was passed in"
    extra = sorted(k for k, v in model_kwargs.items() if v is not None and k not in _PLAIN_KWARGS and k != cache_arg)
    if extra:
        return f"model inputs besides input_ids/attention_mask ({', '.join(extra)})"
    return None


def _check_given_cache(model, cache: SharedPrefixCache, input_ids, generation_config) -> None:
    """A SharedPrefixCache passed to generate() (from :func:`prepare`): refuse what it cannot serve."""
    if not is_enabled(model):
        raise RuntimeError(
            "generate() got a SharedPrefixCache but the model does not use hydrogen attention: call "
            "hydrogen_ops.hf.enable(model) (or `with hydrogen_ops.hf.enabled(model):`) first."
        )
    mode = generation_config.get_generation_mode()
    if str(getattr(mode, "value", mode)) not in _SHARED_MODES:
        raise HydrogenUnsupportedError(f"a SharedPrefixCache cannot serve generation mode {getattr(mode, 'value', mode)!r}")
    blocker = sharing_blocker(model, generation_config.max_length)
    if blocker is not None:
        raise HydrogenUnsupportedError(f"this model cannot use a SharedPrefixCache here: {blocker}")
    cache.claim()
    if cache.get_seq_length() != input_ids.shape[1] - 1:
        raise ValueError(
            f"the SharedPrefixCache holds {cache.get_seq_length()} columns, so input_ids must have "
            f"{cache.get_seq_length() + 1}, got {input_ids.shape[1]}: pass the PreparedBatch's own input_ids"
        )


def _prefill_with_sharing(self, input_ids, generation_config, model_kwargs, *args, **kwargs):
    """``GenerationMixin._prefill``, sharing prefixes when hydrogen attention is enabled."""
    cache_arg = cache_argument(self)
    cache = model_kwargs.get(cache_arg)
    if isinstance(cache, SharedPrefixCache):
        _check_given_cache(self, cache, input_ids, generation_config)
    elif is_enabled(self):
        cache = _shared_cache_for(self, input_ids, generation_config, model_kwargs, cache_arg)
    else:
        cache = None
    if cache is None:
        return _STOCK_PREFILL(self, input_ids, generation_config, model_kwargs, *args, **kwargs)

    model_kwargs[cache_arg] = cache
    model_kwargs[CACHE_KWARG] = cache
    mask = model_kwargs.pop("attention_mask", None)
    if model_kwargs.get("position_ids") is None:
        mask = torch.ones_like(input_ids) if mask is None else mask
        model_kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    # From here on the padding mask is not needed: the cache knows every row's keys and the
    # positions come from position_ids. Without it, every decode step has inputs of the same
    # shapes (what torch.compile and CUDA graphs want) and no per-step mask is built.
    model_inputs = self.prepare_inputs_for_generation(input_ids, next_sequence_length=1, **model_kwargs)
    return self(**model_inputs, return_dict=True)


def _shared_cache_for(model, input_ids, generation_config, model_kwargs, cache_arg) -> Optional[SharedPrefixCache]:
    reason = _why_not_shared(model, generation_config, model_kwargs, cache_arg)
    rows = None
    if reason is None:
        rows = _rows_of_batch(input_ids, model_kwargs.get("attention_mask"))
        if rows is None:
            reason = "the batch is not left-padded"
    if reason is None and model_kwargs.get("position_ids") is not None:
        mask = model_kwargs.get("attention_mask")
        mask = torch.ones_like(input_ids) if mask is None else mask
        stock = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        given = model_kwargs["position_ids"]
        broadcastable = given.dim() == 2 and given.shape[-1] == stock.shape[-1] and given.shape[0] in (1, stock.shape[0])
        if not broadcastable or not torch.equal(given.expand_as(stock).to(stock.device), stock):
            reason = "custom position_ids were given"
    plan = None
    if reason is None:
        new_tokens = generation_config.max_length - input_ids.shape[1]
        plan, reason = _plan(model, rows, new_tokens)
    if plan is None:
        log_once(f"hydrogen_ops.hf: stock attention for this generate() call (no prefix sharing): {reason}.")
        return None
    return _fill_cache(model, plan, input_ids.shape[1] - 1, generation_config.max_length - input_ids.shape[1])


_STOCK_PREFILL = GenerationMixin._prefill


def install_generate_hook() -> None:
    """Route ``GenerationMixin._prefill`` through :func:`_prefill_with_sharing` (idempotent).

    The hook acts only for models whose attention implementation is ``"hydrogen"`` or when a
    :class:`SharedPrefixCache` is passed in; every other model gets the stock prefill.
    """
    if GenerationMixin._prefill is not _prefill_with_sharing:
        GenerationMixin._prefill = _prefill_with_sharing


# --------------------------------------------------------------------------------------------
# Explicit API: prepare / generate / generate_hierarchical
# --------------------------------------------------------------------------------------------


@dataclass
class PreparedBatch:
    """A filled :class:`SharedPrefixCache` and the stock inputs to hand to ``model.generate``."""

    input_ids: torch.LongTensor  # [B, T], left-padded
    attention_mask: torch.LongTensor  # [B, T]
    cache: SharedPrefixCache
    prompt_lengths: List[int] = field(default_factory=list)  # unpadded prompt length per row
    cache_argument: str = "past_key_values"

    def generate_kwargs(self) -> dict:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, self.cache_argument: self.cache}


def prepare(
    model,
    prefix_ids,
    suffix_ids=None,
    num_return_sequences: int = 1,
    *,
    pad_token_id: int = 0,
    max_new_tokens: int = 0,
    max_levels: Optional[int] = None,
) -> PreparedBatch:
    """Prefill the rows ``prefix + suffix_i`` (each ``num_return_sequences`` times) into a
    :class:`SharedPrefixCache`, every shared span once.

    Hydrogen attention must be enabled, for this call and for the ``model.generate(
    **batch.generate_kwargs())`` call that consumes the batch (once). Rows are ordered
    suffix-major (row ``i * num_return_sequences + j`` is sample ``j`` of suffix ``i``) and
    left-padded as stock ``generate()`` lays them out. ``suffix_ids`` may be a tokenizer's
    padded ``BatchEncoding``; pads are dropped using its ``attention_mask``. ``max_levels``
    caps the depth of the sharing tree (1: only the common prefix is shared; None: no cap).
    """
    if num_return_sequences < 1:
        raise ValueError(f"num_return_sequences must be >= 1, got {num_return_sequences}")
    prefix = _one_row(prefix_ids, "prefix_ids")
    suffixes = [[]] if suffix_ids is None else _token_rows(suffix_ids, "suffix_ids")
    rows = [prefix + s for s in suffixes for _ in range(num_return_sequences)]
    if any(len(r) == 0 for r in rows):
        raise ValueError("every prompt (prefix + suffix) must hold at least one token")
    blocker = sharing_blocker(model, max(len(r) for r in rows) + max_new_tokens)
    if blocker is not None:
        raise HydrogenUnsupportedError(f"this model cannot share prefixes here: {blocker}")
    input_ids, attention_mask = _left_padded(rows, pad_token_id, model.device)
    plan = plan_sharing([r[:-1] for r in rows], max_levels=max_levels)
    cache = _fill_cache(model, plan, input_ids.shape[1] - 1, max_new_tokens)
    return PreparedBatch(input_ids, attention_mask, cache, [len(r) for r in rows], cache_argument(model))


_UNSUPPORTED_GENERATE = {
    "assistant_model": "assisted decoding",
    "prompt_lookup_num_tokens": "prompt-lookup decoding",
    "penalty_alpha": "contrastive search",
    "custom_generate": "custom generation loops",
    "cache_implementation": "cache_implementation (the cache is a SharedPrefixCache)",
    "past_key_values": "past_key_values (the cache is built by hydrogen_ops.hf)",
    "cache": "cache (the cache is built by hydrogen_ops.hf)",
    "attention_mask": "attention_mask (built by hydrogen_ops.hf)",
    "inputs_embeds": "inputs_embeds",
    "input_ids": "input_ids (pass prefix_ids/suffix_ids)",
    "inputs": "inputs (pass prefix_ids/suffix_ids)",
    "prefill_chunk_size": "prefill_chunk_size",
}


def _check_generate_kwargs(model, kwargs: dict) -> None:
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


def _generate_rows(model, rows: List[List[int]], num_return_sequences: Optional[int], generate_kwargs: dict):
    _check_generate_kwargs(model, generate_kwargs)
    if any(len(r) == 0 for r in rows):
        raise ValueError("every prompt must hold at least one token")
    if num_return_sequences is not None:
        if num_return_sequences < 1:
            raise ValueError(f"num_return_sequences must be >= 1, got {num_return_sequences}")
        gc = generate_kwargs.get("generation_config") or model.generation_config
        if generate_kwargs.get("do_sample", gc.do_sample):
            generate_kwargs = {**generate_kwargs, "num_return_sequences": num_return_sequences}
        else:  # stock generate() refuses several greedy returns; they are copies of the row
            rows = [r for r in rows for _ in range(num_return_sequences)]
    input_ids, attention_mask = _left_padded(rows, _pad_id(model, generate_kwargs), model.device)
    with enabled(model):
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)


def generate(model, prefix_ids, suffix_ids=None, num_return_sequences: Optional[int] = None, **generate_kwargs):
    """``model.generate()`` over the rows ``prefix + suffix_i``, with hydrogen attention.

    ``suffix_ids``: token lists of any lengths, a 2-D tensor, or a tokenizer's padded
    ``BatchEncoding`` (pads dropped using its ``attention_mask``); None for the prefix alone.
    ``num_return_sequences`` (default: the generation config's) samples are drawn per row.
    ``generate_kwargs`` go to ``model.generate`` (logits processors, stopping criteria,
    streamers, eos/pad ids, a ``generation_config``, ...).

    Returns what ``model.generate`` returns, in its layout: row ``i * num_return_sequences + j``
    is sample ``j`` of suffix ``i``, left-padded prompt then new tokens. Greedy search and
    sampling only (no beams, no assistant).
    """
    prefix = _one_row(prefix_ids, "prefix_ids")
    suffixes = [[]] if suffix_ids is None else _token_rows(suffix_ids, "suffix_ids")
    return _generate_rows(model, [prefix + s for s in suffixes], num_return_sequences, generate_kwargs)


def generate_hierarchical(
    model,
    shared_ids,
    group_ids,
    num_return_sequences: Optional[int] = None,
    suffix_ids=None,
    **generate_kwargs,
):
    """Two-level sharing: ``shared_ids`` (e.g. few-shot examples) shared by all, one
    sub-prefix per group (``group_ids[g]``, e.g. each problem, any lengths), and
    ``num_return_sequences`` samples per group. ``suffix_ids`` (optional) gives one suffix
    per group, appended after its sub-prefix for each of its samples.

    Row ``g * num_return_sequences + j`` is sample ``j`` of group ``g``. Stock ``generate()``
    with hydrogen enabled finds the same tree by itself; this builds its rows.
    """
    shared = _one_row(shared_ids, "shared_ids")
    groups = _token_rows(group_ids, "group_ids")
    if suffix_ids is None:
        suffixes = [[] for _ in groups]
    else:
        suffixes = _token_rows(suffix_ids, "suffix_ids")
        if len(suffixes) != len(groups):
            raise ValueError(f"give one suffix per group: {len(groups)} groups, {len(suffixes)} suffixes")
    return _generate_rows(model, [shared + g + s for g, s in zip(groups, suffixes)], num_return_sequences, generate_kwargs)
