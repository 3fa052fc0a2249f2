"""attn_implementation="paged|hydrogen": Hydragen decode inside transformers' continuous batching,
on tiny random-weight models (no downloads). Greedy tokens must equal paged|sdpa's, and every
shared run the planner finds must cover identical tokens in all requests below it."""

from __future__ import annotations

import os
import sys
import pytest
import torch

transformers = pytest.importorskip("transformers")

sys.path.insert(0, os.path.dirname(__file__))
import hydrogen_ops.hf as hf  # noqa: E402
from hf_models import make_model, random_ids  # noqa: E402
from hydrogen_ops.hf import paged  # noqa: E402
from hydrogen_ops.hf._compat import continuous_batching_unsupported  # noqa: E402
from transformers import AttentionInterface, GenerationConfig  # noqa: E402
from transformers.generation.configuration_utils import ContinuousBatchingConfig  # noqa: E402

pytestmark = pytest.mark.skipif(
    continuous_batching_unsupported() is not None, reason=str(continuous_batching_unsupported())
)
from transformers.generation.continuous_batching.input_outputs import ContinuousBatchingIOs  # noqa: E402

BLOCK = 8
NEW = 10


def cb_config(max_batch_tokens=64):
    # Small blocks and a small token budget: prompts span several blocks and prefill is chunked,
    # so steps mix prefill chunks with decodes.
    return ContinuousBatchingConfig(block_size=BLOCK, num_blocks=256, max_batch_tokens=max_batch_tokens)


def gen_config(**kw):
    kw.setdefault("do_sample", False)
    return GenerationConfig(max_new_tokens=NEW, eos_token_id=-1, pad_token_id=0, **kw)


@pytest.fixture
def recorder(monkeypatch):
    """Checks, at every planned step, that each shared run covers the same tokens at the same
    positions in all its requests (token identity, read from the engine's request states)."""
    steps = {"planned": 0, "decode_with_sharing": 0, "mixed": 0, "max_levels": 0}
    batch = {}

    original_prepare = ContinuousBatchingIOs.prepare_batch_tensors

    def prepare(self, requests_in_batch, *args, **kwargs):
        batch["tokens"] = [list(fs.state.initial_tokens) + list(fs.state.generated_tokens) for fs in requests_in_batch]
        batch["past"] = [fs.state.position_offset for fs in requests_in_batch]
        return original_prepare(self, requests_in_batch, *args, **kwargs)

    original_plan = paged.plan_step

    def plan(*args, **kwargs):
        result = original_plan(*args, **kwargs)
        steps["planned"] += 1
        tokens = batch["tokens"]
        for level in result.shared.levels if result.shared else []:
            for members, start, length in zip(level.members, level.starts, level.lens.tolist()):
                assert len(members) >= 2 and length > 0
                spans = set()
                for m in members:
                    request = result.shared.requests[m]
                    assert start + length <= batch["past"][request], "a shared run reaches the token being decoded"
                    spans.add(tuple(tokens[request][start : start + length]))
                assert len(spans) == 1, f"requests {members} share slots but not tokens at {start}:{start + length}"
        if result.shared:
            steps["decode_with_sharing"] += 1
            steps["max_levels"] = max(steps["max_levels"], len(result.shared.levels))
        if result.decode_batches and result.prefills:
            steps["mixed"] += 1
        return result

    monkeypatch.setattr(ContinuousBatchingIOs, "prepare_batch_tensors", prepare)
    monkeypatch.setattr(paged, "plan_step", plan)
    return steps


def run_batch(model, prompts, impl, cbc=None, **gen):
    model.set_attn_implementation(impl)
    out = model.generate_batch(prompts, generation_config=gen_config(**gen), continuous_batching_config=cbc or cb_config())
    return {rid: list(o.generated_tokens) for rid, o in out.items()}


def shared_prompts(num_docs=2, per_doc=3, system_len=5 * BLOCK + 3, doc_len=2 * BLOCK + 5, seed=0):
    system = random_ids(system_len, seed)
    docs = [random_ids(doc_len, seed + 10 + d) for d in range(num_docs)]
    return [system + docs[i % num_docs] + random_ids(2 + i, seed + 100 + i) for i in range(num_docs * per_doc)]


def test_registered():
    assert "paged|hydrogen" in AttentionInterface._global_mapping
    # No mask function: the engine must pass attention_mask=None (causality comes from cu_seq_lens).
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    assert "paged|hydrogen" not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_generate_batch_shared_system_prompt_and_documents(family, recorder):
    model = make_model(family)
    prompts = shared_prompts()
    expected = run_batch(model, prompts, "paged|sdpa")
    got = run_batch(model, prompts, "paged|hydrogen")
    assert got == expected
    assert recorder["decode_with_sharing"] > 0
    assert recorder["max_levels"] >= 2, recorder  # system prompt, then one document per group
    assert recorder["mixed"] > 0, recorder  # chunked prefill ran alongside decodes


def test_generate_batch_prompts_sharing_nothing(recorder):
    model = make_model("llama")
    prompts = [random_ids(3 * BLOCK + i, 50 + i) for i in range(4)]
    assert run_batch(model, prompts, "paged|hydrogen") == run_batch(model, prompts, "paged|sdpa")
    assert recorder["planned"] > 0 and recorder["decode_with_sharing"] == 0


def run_manager(model, impl, prompts, max_new_tokens, wait_after=None, **gen):
    """Runs prompts through a ContinuousBatchingManager; request ``wait_after`` is awaited (so
    that the requests before it are decoding) before the following ones are added."""
    model.set_attn_implementation(impl)
    manager = model.init_continuous_batching(generation_config=gen_config(**gen), continuous_batching_config=cb_config())
    manager.start()
    outputs = {}
    try:
        for i, prompt in enumerate(prompts):
            rid = manager.add_request(prompt, request_id=f"r{i}", max_new_tokens=max_new_tokens[i])
            if i == wait_after:
                while rid not in outputs:
                    result = manager.get_result(timeout=120)
                    assert result is not None, "the manager stopped returning results"
                    outputs[result.request_id] = result
        expected = len(prompts) * gen.get("num_return_sequences", 1)
        while len(outputs) < expected:
            result = manager.get_result(timeout=120)
            assert result is not None, "the manager stopped returning results"
            outputs[result.request_id] = result
    finally:
        manager.stop(block=True, timeout=60)
    return {rid: list(o.generated_tokens) for rid, o in outputs.items()}


def test_manager_num_return_sequences_forks(recorder):
    # (generate_batch of transformers 5.17 returns only the parent of each fork, so the manager is used)
    model = make_model("llama")
    prompts = [random_ids(4 * BLOCK + 3, 1), random_ids(3 * BLOCK + 1, 2)]
    # num_return_sequences needs sampling; top_k=1 keeps it greedy (deterministic).
    fork = dict(num_return_sequences=3, do_sample=True, top_k=1)
    expected = run_manager(model, "paged|sdpa", prompts, [NEW, NEW], **fork)
    got = run_manager(model, "paged|hydrogen", prompts, [NEW, NEW], **fork)
    assert len(got) == 6 and got == expected
    assert recorder["decode_with_sharing"] > 0


def test_manager_requests_added_while_others_decode(recorder):
    model = make_model("qwen2")
    prompts = shared_prompts(num_docs=2, per_doc=3, seed=3)
    lengths = [NEW + 2 * i for i in range(len(prompts))]
    expected = run_manager(model, "paged|sdpa", prompts, lengths, wait_after=1)
    got = run_manager(model, "paged|hydrogen", prompts, lengths, wait_after=1)
    assert got == expected
    assert [len(expected[f"r{i}"]) for i in range(len(prompts))] == lengths
    assert recorder["decode_with_sharing"] > 0


# ---------------------------------------------------------------------------------------------
# The planner on synthetic layouts
# ---------------------------------------------------------------------------------------------


def layout(requests, q_lens=None):
    """Packed read_index and cu_seq_lens for requests given as lists of physical slots."""
    q_lens = q_lens or [1] * len(requests)
    cu_q, cu_k = [0], [0]
    for slots, q in zip(requests, q_lens):
        cu_q.append(cu_q[-1] + q)
        cu_k.append(cu_k[-1] + len(slots))
    read = torch.tensor([s for r in requests for s in r], dtype=torch.int64)
    return read, torch.tensor(cu_q, dtype=torch.int32), torch.tensor(cu_k, dtype=torch.int32)


def blocks(*ids, tail=0, tail_block=None):
    slots = [b * BLOCK + o for b in ids for o in range(BLOCK)]
    if tail:
        slots += [tail_block * BLOCK + o for o in range(tail)]
    return slots


def read_slots(batch, i):
    """The slots decode request i of ``batch`` attends over: its shared runs, then its suffix."""
    read = []
    for lv in batch.levels:
        p = int(lv.seq_to_prefix[i])
        read += lv.slots[p, : int(lv.lens[p])].tolist()
    return read + batch.suffix_slots[i, : int(batch.suffix_lens[i])].tolist()


def test_plan_levels_random_block_order_and_partial_blocks():
    # Blocks in arbitrary physical order: 9,3 shared by r0-r3; then 5 by r0,r1 and 7 by r2,r3;
    # r4 shares nothing; r5 shares block 3 of the others but at another position (not a prefix).
    requests = [
        blocks(9, 3, 5, 11, tail=3, tail_block=20),
        blocks(9, 3, 5, tail=5, tail_block=21),
        blocks(9, 3, 7, tail=1, tail_block=22),
        blocks(4, tail=2, tail_block=24),
        blocks(9, 3, 7, 2, tail=2, tail_block=23),
        blocks(30, 3, tail=2, tail_block=25),
    ]
    plan = paged.plan_step(*layout(requests), BLOCK)
    shared, alone = plan.shared, plan.alone
    assert shared.requests == [0, 1, 2, 4] and alone.requests == [3, 5]
    assert shared.rows.tolist() == [0, 1, 2, 4] and alone.rows.tolist() == [3, 5]
    assert [lv.members for lv in shared.levels] == [[[0, 1, 2, 3]], [[0, 1], [2, 3]]]
    assert shared.levels[0].lens.tolist() == [2 * BLOCK]
    assert shared.levels[0].seq_to_prefix.tolist() == [0, 0, 0, 0]
    assert shared.levels[1].lens.tolist() == [BLOCK, BLOCK]
    assert shared.levels[1].seq_to_prefix.tolist() == [0, 0, 1, 1]
    assert shared.levels[0].slots[0, : 2 * BLOCK].tolist() == blocks(9, 3)
    assert shared.levels[1].starts == [2 * BLOCK, 2 * BLOCK]
    assert alone.levels == []
    # every request reads exactly its own slots, in order: shared runs, then its suffix
    for batch in (shared, alone):
        for i, request in enumerate(batch.requests):
            assert read_slots(batch, i) == requests[request]
    assert plan.shared_keys == 3 * 2 * BLOCK + BLOCK + BLOCK


def test_plan_empty_run_for_a_request_that_stops_sharing_early():
    # r2 shares block 9 with r0 and r1 but not their second block: level 1 maps it to an empty run.
    requests = [blocks(9, 5, tail=1, tail_block=1), blocks(9, 5, tail=2, tail_block=2), blocks(9, 6, tail=1, tail_block=3)]
    plan = paged.plan_step(*layout(requests), BLOCK)
    assert plan.alone is None
    assert [lv.members for lv in plan.shared.levels] == [[[0, 1, 2]], [[0, 1]]]
    assert plan.shared.levels[1].lens.tolist() == [BLOCK, 0]
    assert plan.shared.levels[1].seq_to_prefix.tolist() == [0, 0, 1]
    for i in range(3):
        assert read_slots(plan.shared, i) == requests[i]


def test_plan_does_not_share_on_a_block_id_alone():
    # r1's first block starts at block 9's first slot but is not block 9 (slots differ after it):
    # the run is not a whole block, so nothing is shared even though the first slots agree.
    forged = [9 * BLOCK] + [40 * BLOCK + o for o in range(1, BLOCK)]
    requests = [blocks(9, tail=2, tail_block=1), forged + [2 * BLOCK, 2 * BLOCK + 1]]
    plan = paged.plan_step(*layout(requests), BLOCK)
    assert plan.shared is None
    assert read_slots(plan.alone, 1) == requests[1]


def test_plan_block_holding_the_new_token_is_never_shared():
    # Both requests end exactly at the end of the same block (impossible for distinct writers,
    # but the planner must still not hand one request's newest slot to another).
    requests = [blocks(6, 8), blocks(6, 8)]
    plan = paged.plan_step(*layout(requests), BLOCK)
    assert [lv.members for lv in plan.shared.levels] == [[[0, 1]]]
    assert plan.shared.levels[0].lens.tolist() == [BLOCK]


def test_plan_prefill_and_padding_sequences():
    requests = [blocks(1, 2, tail=3, tail_block=3), blocks(1, 2, tail=1, tail_block=4), blocks(1, 2, 5), []]
    plan = paged.plan_step(*layout(requests, q_lens=[1, 1, BLOCK, 0]), BLOCK)
    assert plan.shared.requests == [0, 1] and plan.alone is None
    assert [(s, e) for s, e, _ in plan.prefills] == [(2, 2 + BLOCK)]
    assert plan.prefills[0][2].tolist() == requests[2]


def test_plan_first_prefill_reads_the_new_keys():
    # No request reads the cache (empty read_index): keys are the step's own rows.
    read, cu_q, _ = layout([[0] * 3, [0] * 5], q_lens=[3, 5])
    plan = paged.plan_step(read[:0], cu_q, cu_q, BLOCK)
    assert not plan.source_is_cache and plan.decode_batches == []
    assert [(s, e, sl.tolist()) for s, e, sl in plan.prefills] == [(0, 3, [0, 1, 2]), (3, 8, [3, 4, 5, 6, 7])]


def test_gather_pages():
    pages = torch.randn(40, 2, 4)
    slots = torch.tensor([[5, 7, 1], [39, 0, 0]])
    got = paged.gather_pages(pages, slots)
    assert got.shape == (2, 2, 3, 4)
    assert torch.equal(got[1, :, 0], pages[39]) and torch.equal(got[0, :, 1], pages[7])


def test_called_without_cache_is_refused():
    model = make_model("llama", attn_implementation="paged|hydrogen")
    with pytest.raises(ValueError, match="paged attention cache"):
        model(torch.tensor([random_ids(5, 0)]))


def test_sliding_window_model_is_refused():
    model = make_model("mistral", sliding_window=16)
    model.set_attn_implementation("paged|hydrogen")
    # The engine catches the error and fails the request with its message.
    out = model.generate_batch([random_ids(20, 0)], generation_config=gen_config(), continuous_batching_config=cb_config())
    (result,) = out.values()
    assert "sliding-window" in str(result.error)

