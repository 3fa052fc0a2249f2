"""``attn_implementation="paged|hydrogen"``: Hydragen decode inside transformers' continuous
batching (``generate_batch``, ``init_continuous_batching``, ``transformers serve``).

The engine hands the attention function a :class:`PagedAttentionCache` plus, per step, the
packed queries of every scheduled request, ``cu_seq_lens_q/k`` and ``read_index`` (the
physical cache slots each request reads, in logical order). Requests that share a prompt
prefix point at the same physical blocks (prefix-block reuse at prefill, forks of
``num_return_sequences``). Each step, :func:`plan_step` finds those shared leading blocks as a
tree (a system prompt shared by all, a document shared by a group, the forks of one prompt):

* every decode request (one query token) runs :func:`hydrogen_ops.hydragen_attention`: one
  prefix attention per shared run of blocks, for all requests below it at once, a suffix
  attention over the request's own slots, and an exact merge;
* requests with several query tokens (prefill, chunked prefill) run causal attention over
  their own slots (:func:`hydrogen_ops.suffix_attention`, bottom-right aligned).

Sharing is decided by slot identity: two requests share a run only when they read the very
same physical slots at the same logical positions, so they read the same keys and values
that ``paged|sdpa`` would read for each of them; nothing is inferred from hashes or from one
block id standing for a run. :func:`attend_slots` reads K/V by slot: on the CPU the paged
ops read the cache in place (one slot per page); elsewhere the slots are gathered into
dense tensors first (:func:`gather_pages`), since the CUDA kernels read dense K/V only.

The engine picks behaviour by the implementation's name: ``paged|hydrogen`` gets no 4D mask
(causality comes from ``cu_seq_lens``), so no mask function is registered for it; it gets no
``block_table`` (that fast path is for flash names). On a GPU, turn CUDA graphs off
(``ContinuousBatchingConfig(use_cuda_graph=False)``): the engine would otherwise capture the
step, and the plan is made on the host each step.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from transformers import AttentionInterface

import hydrogen_ops as _ops

from ._compat import continuous_batching_unsupported
from .checks import HydrogenUnsupportedError

PAGED_ATTN_IMPLEMENTATION = "paged|hydrogen"
_PLAN_ATTR = "_hydrogen_step_plans"

# Process-wide counters of planned steps (read by ``python -m hydrogen_ops.serve`` at exit).
STATS = {"steps": 0, "decode_steps_with_shared_prefix": 0, "key_reads_saved": 0}


def attend_slots(
    q: torch.Tensor,
    k_pages: torch.Tensor,
    v_pages: torch.Tensor,
    levels: Sequence["SharedLevel"],
    own_slots: torch.Tensor,
    own_lens: Optional[torch.Tensor],
    scaling: Optional[float],
) -> torch.Tensor:
    """Attention of ``q [B, Hq, Lq, D]`` over the shared ``levels``, then over each row's own
    slots (``own_slots [B, L]``, ``own_lens [B]``, causal, bottom-right aligned), merged.
    ``k_pages``, ``v_pages``: ``[num_slots, Hkv, D]``. Returns ``out`` in q's dtype."""
    if q.device.type != "cpu":
        prefixes = [
            (gather_pages(k_pages, lv.slots), gather_pages(v_pages, lv.slots), lv.lens, lv.seq_to_prefix)
            for lv in levels
        ]
        own = (gather_pages(k_pages, own_slots), gather_pages(v_pages, own_slots), own_lens)
        return _ops.hydragen_attention(q, prefixes, own, causal=True, scale=scaling)
    kp, vp = k_pages.unsqueeze(1), v_pages.unsqueeze(1)  # [num_slots, 1, Hkv, D]: a page per slot
    if own_lens is None:
        own_lens = torch.full((own_slots.shape[0],), own_slots.shape[1], dtype=torch.int64, device=q.device)
    partial = torch.float32 if levels else None  # merged once, rounded once
    parts = [
        _ops.paged_prefix_attention(q, kp, vp, lv.slots, lv.lens, lv.seq_to_prefix, scale=scaling, out_dtype=partial)
        for lv in levels
    ]
    parts.append(_ops.paged_suffix_attention(q, kp, vp, own_slots, own_lens, scale=scaling, out_dtype=partial))
    if len(parts) == 1:
        return parts[0][0]
    return _ops.merge_attention([o for o, _ in parts], [s for _, s in parts], out_dtype=q.dtype)[0]


def gather_pages(pages: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """K or V of ``slots`` as a dense ``[rows, Hkv, L, D]`` tensor.

    ``pages``: ``[num_slots, Hkv, D]`` (the paged cache of one layer, or a step's new keys);
    ``slots``: int64 ``[rows, L]`` physical slot indices (padding entries may be any valid slot,
    the ops ignore keys past each row's length).
    """
    rows, length = slots.shape
    dense = pages.index_select(0, slots.reshape(-1))  # index_select: markedly faster than pages[slots] on CPU
    return dense.view(rows, length, *pages.shape[1:]).transpose(1, 2)


@dataclass
class SharedLevel:
    """One level of the sharing tree: ``slots[p, :lens[p]]`` are the keys of shared run p;
    decode request i reads run ``seq_to_prefix[i]`` (an empty run when it has none here)."""

    slots: torch.Tensor  # int64 [P, Lp]
    lens: torch.Tensor  # int32 [P]
    seq_to_prefix: torch.Tensor  # int32 [num_decode]
    members: List[List[int]]  # decode-request indices below each run (for inspection and tests)
    starts: List[int]  # first logical position of each run


@dataclass
class DecodeBatch:
    """Decode requests (one query token each) attended in one call: over ``levels`` (shared
    runs; empty for requests that share nothing), then over each one's own slots."""

    requests: List[int]  # request indices, in cu_seq_lens order
    rows: torch.Tensor  # int64: their query rows in the packed batch
    levels: List[SharedLevel]  # members index into ``requests``
    suffix_slots: torch.Tensor  # int64 [len(requests), Ls]
    suffix_lens: torch.Tensor  # int32 [len(requests)]


@dataclass
class StepPlan:
    """How one engine step's attention is computed; built once per step, shared by its layers.

    Decode requests under a shared run form one batch (Hydragen), those that share nothing
    another (plain attention), so that one long unshared request does not pad every suffix."""

    source_is_cache: bool  # K/V read from the paged cache (else from the step's new keys)
    shared: Optional[DecodeBatch]
    alone: Optional[DecodeBatch]
    prefills: List[Tuple[int, int, torch.Tensor]] = field(default_factory=list)  # (q_start, q_end, slots)

    @property
    def decode_batches(self) -> List[DecodeBatch]:
        return [batch for batch in (self.shared, self.alone) if batch is not None]

    @property
    def shared_keys(self) -> int:
        """Key positions read once per run instead of once per request (for logging/benchmarks)."""
        if self.shared is None:
            return 0
        return sum((len(m) - 1) * int(n) for level in self.shared.levels for m, n in zip(level.members, level.lens))


def _full_blocks(slots: torch.Tensor, block_size: int) -> List[int]:
    """Physical ids of the leading complete blocks of one request's slot list, stopping at the
    first block whose slots are not exactly ``block * block_size + 0..block_size-1`` (then the
    run cannot be named by a block id). The block holding the request's newest token is left
    out: it is being written by this request alone."""
    num_full = (slots.numel() - 1) // block_size
    if num_full <= 0:
        return []
    blocks = slots[: num_full * block_size].view(num_full, block_size)
    firsts = blocks[:, 0]
    offsets = torch.arange(block_size, dtype=slots.dtype, device=slots.device)
    whole = (blocks == firsts[:, None] + offsets).all(dim=1) & (firsts % block_size == 0)
    bad = (~whole).nonzero()
    usable = int(bad[0, 0]) if bad.numel() else num_full
    return (firsts[:usable] // block_size).tolist()


def _sharing_tree(block_lists: Sequence[List[int]]):
    """Runs of leading blocks shared by two or more requests, as levels of a tree.

    Returns ``levels`` (a list, outermost first, of lists of ``(members, start_block,
    end_block)``) and, per request, the block where its own suffix starts."""
    levels: List[List[Tuple[List[int], int, int]]] = []
    suffix_start = [0] * len(block_lists)

    def visit(members: List[int], depth: int, level: int) -> None:
        by_block: Dict[int, List[int]] = defaultdict(list)
        for m in members:
            if len(block_lists[m]) > depth:
                by_block[block_lists[m][depth]].append(m)
        for group in by_block.values():
            if len(group) < 2:
                continue
            end = depth + 1
            while all(len(block_lists[m]) > end for m in group) and len({block_lists[m][end] for m in group}) == 1:
                end += 1
            while len(levels) <= level:
                levels.append([])
            levels[level].append((group, depth, end))
            for m in group:
                suffix_start[m] = end
            visit(group, end, level + 1)

    visit(list(range(len(block_lists))), 0, 0)
    return levels, suffix_start


def _pad_rows(rows: Sequence[torch.Tensor], device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D slot tensors into ``[len(rows), max_len]`` (padding repeats slot 0 of the
    row, or 0 for an empty row) and their lengths (int32)."""
    lens = [int(r.numel()) for r in rows]
    width = max(max(lens), 1)
    out = torch.zeros(len(rows), width, dtype=torch.int64, device=device)
    for i, r in enumerate(rows):
        if r.numel():
            out[i, : r.numel()] = r
            out[i, r.numel() :] = r[0]
    return out, torch.tensor(lens, dtype=torch.int32, device=device)


def plan_step(
    read_index: torch.Tensor, cu_seq_lens_q: torch.Tensor, cu_seq_lens_k: torch.Tensor, block_size: int
) -> StepPlan:
    """Plan one engine step from its packed layout (see the module docstring).

    ``read_index`` empty means no request reads the cache (first prefills only): each request's
    keys are then its own new keys, rows ``cu_seq_lens_k[b]:cu_seq_lens_k[b+1]`` of the step.
    """
    device = read_index.device
    cu_q = cu_seq_lens_q.tolist()
    cu_k = cu_seq_lens_k.tolist()
    source_is_cache = read_index.numel() > 0
    decode_requests, decode_slots, prefills = [], [], []
    for b in range(len(cu_q) - 1):
        q_len, k_start, k_end = cu_q[b + 1] - cu_q[b], cu_k[b], cu_k[b + 1]
        if q_len == 0:  # padding sequence
            continue
        if source_is_cache:
            slots = read_index[k_start:k_end]
        else:
            slots = torch.arange(k_start, k_end, dtype=torch.int64, device=device)
        if q_len == 1:
            decode_requests.append(b)
            decode_slots.append(slots)
        else:
            prefills.append((cu_q[b], cu_q[b + 1], slots))

    shared, alone = None, list(range(len(decode_slots)))
    if source_is_cache and len(decode_slots) > 1:
        block_lists = [_full_blocks(s, block_size) for s in decode_slots]
        tree, suffix_start = _sharing_tree(block_lists)
        if tree:
            sharing = [i for i in alone if suffix_start[i] > 0]
            alone = [i for i in alone if suffix_start[i] == 0]
            position = {i: j for j, i in enumerate(sharing)}
            levels = []
            for runs in tree:
                members, starts, run_slots = [], [], []
                seq_to_prefix = [len(runs)] * len(sharing)  # index len(runs): the empty run
                for p, (group, start, end) in enumerate(runs):
                    members.append([position[m] for m in group])
                    starts.append(start * block_size)
                    run_slots.append(decode_slots[group[0]][start * block_size : end * block_size])
                    for m in group:
                        seq_to_prefix[position[m]] = p
                if len(runs) in seq_to_prefix:
                    run_slots.append(run_slots[0][:0])
                slots, lens = _pad_rows(run_slots, device)
                seq_to_prefix = torch.tensor(seq_to_prefix, dtype=torch.int32, device=device)
                levels.append(SharedLevel(slots, lens, seq_to_prefix, members, starts))
            suffixes = [decode_slots[i][suffix_start[i] * block_size :] for i in sharing]
            shared = _decode_batch([decode_requests[i] for i in sharing], suffixes, levels, cu_q, device)
    alone_batch = None
    if alone:
        alone_batch = _decode_batch([decode_requests[i] for i in alone], [decode_slots[i] for i in alone], [], cu_q, device)
    return StepPlan(source_is_cache, shared, alone_batch, prefills)


def _decode_batch(requests, suffixes, levels, cu_q, device) -> DecodeBatch:
    suffix_slots, suffix_lens = _pad_rows(suffixes, device)
    rows = torch.tensor([cu_q[b] for b in requests], dtype=torch.int64, device=device)
    return DecodeBatch(requests, rows, levels, suffix_slots, suffix_lens)


def _step_plan(cache, module, read_index, cu_seq_lens_q, cu_seq_lens_k) -> StepPlan:
    """The plan of the current step for this layer's group: computed at the group's first layer
    (layers run in order within a forward), reused by the others."""
    group_idx, layer_in_group = cache.layer_index_to_group_indices[module.layer_idx]
    plans = cache.__dict__.setdefault(_PLAN_ATTR, {})
    if layer_in_group == 0 or group_idx not in plans:
        plan = plans[group_idx] = plan_step(read_index, cu_seq_lens_q, cu_seq_lens_k, cache.block_size)
        STATS["steps"] += 1
        if plan.shared is not None:
            STATS["decode_steps_with_shared_prefix"] += 1
            STATS["key_reads_saved"] += plan.shared_keys
    return plans[group_idx]


def paged_hydrogen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    **kwargs,
):
    """The ``"paged|hydrogen"`` attention function (packed ``[1, H, tokens, D]`` inputs).

    Writes the step's keys and values into the paged cache through the cache's own ``update``,
    then attends as described in the module docstring. Returns ``([1, tokens, Hq, D], None)``.
    """
    unsupported_engine = continuous_batching_unsupported()
    if unsupported_engine is not None:
        raise HydrogenUnsupportedError(unsupported_engine)
    cache = kwargs.get("cache")
    if cache is None:
        raise ValueError(
            "paged|hydrogen was called without a paged attention cache (the `cache` kwarg): it only runs "
            "inside continuous batching (generate_batch, init_continuous_batching, transformers serve). "
            "Use attn_implementation='hydrogen' for a standard forward."
        )
    for unsupported in ("softcap", "s_aux"):
        if kwargs.get(unsupported) is not None:
            raise HydrogenUnsupportedError(f"paged|hydrogen does not support `{unsupported}` (softcapping / sinks).")
    if cache.sliding_windows[module.layer_idx] != 1:
        raise HydrogenUnsupportedError(
            "paged|hydrogen supports full-attention layers only; this model has sliding-window layers "
            "(use paged|sdpa for it)."
        )
    if query.is_cuda and torch.cuda.is_current_stream_capturing():
        raise HydrogenUnsupportedError(
            "paged|hydrogen plans every step on the host (the shared runs change with the batch), so it cannot "
            "be captured in a CUDA graph: pass ContinuousBatchingConfig(use_cuda_graph=False) "
            "(transformers serve: --no-cb-use-cuda-graph)."
        )
    if dropout and module.training:
        raise HydrogenUnsupportedError("paged|hydrogen is inference-only: attention dropout is not supported.")
    cu_seq_lens_k = kwargs["cu_seq_lens_k"]
    if isinstance(cu_seq_lens_k, dict):
        cu_seq_lens_k = cu_seq_lens_k["full_attention"]
    group_idx, layer_in_group = cache.layer_index_to_group_indices[module.layer_idx]
    read_index = kwargs["read_index"][group_idx]

    # Write-only update (an empty read index): the keys are read below through the plan.
    new_keys, new_values = cache.update(
        key_states=key,
        value_states=value,
        layer_idx=module.layer_idx,
        read_index=[read_index[:0] for _ in kwargs["read_index"]],
        write_index=kwargs["write_index"],
    )
    plan = _step_plan(cache, module, read_index, kwargs["cu_seq_lens_q"], cu_seq_lens_k)
    if plan.source_is_cache:
        k_pages, v_pages = cache.key_cache[layer_in_group], cache.value_cache[layer_in_group]
    else:
        k_pages, v_pages = new_keys, new_values

    num_tokens = query.shape[2]
    out = query.new_zeros(num_tokens, query.shape[1], query.shape[3])
    for batch in plan.decode_batches:
        q = query[0, :, batch.rows, :].transpose(0, 1).unsqueeze(2)  # [B, Hq, 1, D]
        decoded = attend_slots(q, k_pages, v_pages, batch.levels, batch.suffix_slots, batch.suffix_lens, scaling)
        out[batch.rows] = decoded[:, :, 0, :]
    for q_start, q_end, slots in plan.prefills:
        q = query[:, :, q_start:q_end, :]
        attended = attend_slots(q, k_pages, v_pages, (), slots[None], None, scaling)
        out[q_start:q_end] = attended[0].transpose(0, 1)
    return out.unsqueeze(0), None


AttentionInterface.register(PAGED_ATTN_IMPLEMENTATION, paged_hydrogen_attention_forward)
