"""Prefix detection: a radix tree over the rows of a batch, laid out as cache levels.

Rows that share a leading span share a node; a node's children split on the first token where
their rows differ. Only spans read by two rows or more become shared nodes; what is left of
each row after its deepest shared node is its own *tail*. The tree is laid out by depth: level
``d`` holds every node at depth ``d`` (a row whose path is shorter gets an empty span there),
which is exactly the layout :class:`~hydrogen_ops.hf.SharedPrefixCache` stores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence


@dataclass
class _Node:
    start: int  # position of the span's first token in each of its rows
    end: int
    rows: List[int]
    children: List["_Node"] = field(default_factory=list)


@dataclass
class SharingPlan:
    """Shared levels and per-row tails of a batch of token rows.

    ``levels[d][i]`` is the token span of node ``i`` at depth ``d``, starting at position
    ``level_starts[d][i]``; ``parents[d][i]`` is its parent at depth ``d - 1`` (``parents[0]``
    is empty). Row ``r`` continues node ``tail_parents[r]`` of the deepest level with
    ``tails[r]``, starting at position ``tail_starts[r]``.
    """

    levels: List[List[List[int]]]
    level_starts: List[List[int]]
    parents: List[List[int]]
    tails: List[List[int]]
    tail_parents: List[int]
    tail_starts: List[int]

    @property
    def shared(self) -> bool:
        return bool(self.levels)

    def shared_tokens(self) -> int:
        """Tokens stored once in the levels (each would be stored once per row without sharing)."""
        return sum(len(span) for level in self.levels for span in level)


def _common_end(rows: Sequence[Sequence[int]], members: List[int], start: int) -> int:
    first = rows[members[0]]
    end = min(len(rows[r]) for r in members)
    for r in members[1:]:
        row = rows[r]
        i = start
        while i < end and row[i] == first[i]:
            i += 1
        end = i
    return end


def _split(rows: Sequence[Sequence[int]], members: List[int], start: int, levels_left: Optional[int]) -> List[_Node]:
    """Shared child nodes of rows ``members``, which all agree up to ``start``."""
    if levels_left == 0:
        return []
    by_token: Dict[int, List[int]] = {}
    for r in members:
        if len(rows[r]) > start:
            by_token.setdefault(rows[r][start], []).append(r)
    nodes = []
    for group in by_token.values():
        if len(group) < 2:
            continue
        end = _common_end(rows, group, start)
        node = _Node(start, end, group)
        node.children = _split(rows, group, end, None if levels_left is None else levels_left - 1)
        nodes.append(node)
    return nodes


def plan_sharing(rows: Sequence[Sequence[int]], max_levels: Optional[int] = None) -> SharingPlan:
    """Radix-tree plan of ``rows`` (lists of real tokens, no padding).

    ``max_levels`` caps the depth (what lies deeper stays in the rows' own tails). With nothing
    shared by two rows, the plan has no levels and every row is its own tail.
    """
    if max_levels is not None and max_levels < 0:
        raise ValueError(f"max_levels must be >= 0 or None, got {max_levels}")
    rows = [list(r) for r in rows]
    top = _split(rows, list(range(len(rows))), 0, max_levels)
    if not top:
        return SharingPlan([], [], [], rows, list(range(len(rows))), [0] * len(rows))

    def depth(node: _Node) -> int:
        return 1 + max((depth(c) for c in node.children), default=0)

    n_levels = max(depth(n) for n in top)
    # Rows not covered by a shared node at some depth get an empty span there, so that every
    # row has exactly one node per level.
    root = _Node(0, 0, list(range(len(rows))), top)
    stage = [root]
    parent_of: List[List[int]] = []
    nodes_by_level: List[List[_Node]] = []
    for _ in range(n_levels):
        nxt, parents = [], []
        for p, node in enumerate(stage):
            covered = {r for c in node.children for r in c.rows}
            alone = [r for r in node.rows if r not in covered]
            kids = list(node.children) + ([_Node(node.end, node.end, alone)] if alone else [])
            nxt += kids
            parents += [p] * len(kids)
        nodes_by_level.append(nxt)
        parent_of.append(parents)
        stage = nxt

    tail_parents = [0] * len(rows)
    for i, node in enumerate(stage):
        for r in node.rows:
            tail_parents[r] = i
    tail_starts = [stage[tail_parents[r]].end for r in range(len(rows))]
    return SharingPlan(
        levels=[[rows[n.rows[0]][n.start : n.end] for n in level] for level in nodes_by_level],
        level_starts=[[n.start for n in level] for level in nodes_by_level],
        parents=[[] if d == 0 else ps for d, ps in enumerate(parent_of)],
        tails=[rows[r][tail_starts[r] :] for r in range(len(rows))],
        tail_parents=tail_parents,
        tail_starts=tail_starts,
    )
