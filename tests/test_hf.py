"""Tests of the HuggingFace integration (hydrogen_ops.hf) on tiny random-weight models."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

sys.path.insert(0, os.path.dirname(__file__))
import hydrogen_ops  # noqa: E402
import hydrogen_ops.hf as hf  # noqa: E402
from hf_models import FAMILIES, FAMILY_OVERRIDES, left_padded, make_model, random_ids  # noqa: E402

NEW = 32  # new tokens in the greedy tests
GEN = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
SAMPLE = dict(do_sample=True, top_k=30, temperature=0.9, pad_token_id=0, eos_token_id=None)


@pytest.fixture
def spy(monkeypatch):
    """Records every hydragen_attention call made by the integration."""
    calls = []
    original = hydrogen_ops.hydragen_attention

    def wrapper(q, prefixes, suffix=None, **kwargs):
        calls.append({"q": tuple(q.shape), "prefixes": [tuple(p[0].shape) for p in prefixes], "suffix": tuple(suffix[0].shape)})
        return original(q, prefixes, suffix, **kwargs)

    monkeypatch.setattr(hydrogen_ops, "hydragen_attention", wrapper)
    return calls


def stock_greedy(model, rows, new=NEW, **kw):
    """Stock generation of each sequence alone (unpadded, batch 1); returns new tokens."""
    out = []
    for r in rows:
        ids = torch.tensor([r])
        out.append(model.generate(ids, max_new_tokens=new, **{**GEN, **kw})[0, ids.shape[1] :])
    return out


def stock_last_logits(model, rows):
    with torch.no_grad():
        return torch.stack([model(torch.tensor([r])).logits[0, -1].float() for r in rows])


def hydrogen_next_logits(model, batch):
    """Logits of generate()'s first step, computed through the prepared cache."""
    pos = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -1:]
    with torch.no_grad():
        out = model(
            input_ids=batch.input_ids[:, -1:],
            attention_mask=batch.attention_mask,
            position_ids=pos,
            hydrogen_cache=batch.cache,
            **{batch.cache_argument: batch.cache},
        )
    return out.logits[:, -1].float()


def with_and_without(model, fn, seed=None):
    """``fn()`` with stock attention, then with hydrogen enabled (same seed)."""
    outs = []
    for on in (False, True):
        if seed is not None:
            torch.manual_seed(seed)
        if on:
            with hf.enabled(model):
                outs.append(fn())
        else:
            outs.append(fn())
    return outs


PREFIX = random_ids(48, seed=1)
SUFFIXES = [random_ids(n, seed=10 + n) for n in (3, 9, 1, 5)]


# ----------------------------------------------------------------------------------------
# Import, registration, enable/disable
# ----------------------------------------------------------------------------------------


def test_import_hydrogen_ops_does_not_import_transformers():
    code = "import sys, hydrogen_ops; assert 'transformers' not in sys.modules, 'transformers imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_without_transformers_names_the_extra():
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "try:\n    import hydrogen_ops.hf\nexcept ImportError as e:\n    print(e)\nelse:\n    raise SystemExit('imported')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert 'pip install "hydrogen_ops[hf]"' in out


def test_version_gate_warns_for_untested_and_refuses_old(monkeypatch):
    from hydrogen_ops.hf import _compat

    monkeypatch.delenv("HYDROGEN_HF_SKIP_VERSION_CHECK", raising=False)
    monkeypatch.setattr(_compat.transformers, "__version__", "5.99.0")
    with pytest.warns(UserWarning, match="untested"):
        _compat.check_transformers_version()
    monkeypatch.setattr(_compat.transformers, "__version__", "5.16.0")
    with pytest.raises(ImportError, match="5.17"):
        _compat.check_transformers_version()
    for tested in ("5.17.0", "5.18.2"):
        monkeypatch.setattr(_compat.transformers, "__version__", tested)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _compat.check_transformers_version()


def test_public_names_importable():
    for name in hf.__all__:
        assert hasattr(hf, name), name
    assert not os.path.exists(os.path.join(os.path.dirname(hf.__file__), "..", "hf.py"))


def test_registered_with_attention_and_mask_interfaces():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    assert "hydrogen" in AttentionInterface().valid_keys()
    assert "hydrogen" in AttentionMaskInterface._global_mapping


def test_from_pretrained_generate_shares(tmp_path, spy):
    """attn_implementation="hydrogen" at load time is enough for stock generate() to share."""
    model = make_model("llama")
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="hydrogen")
    assert hf.is_enabled(loaded)
    ids = torch.tensor([PREFIX] * 3)
    out = loaded.generate(ids, max_new_tokens=8, **GEN)
    assert torch.equal(out, model.generate(ids, max_new_tokens=8, **GEN))
    assert any(c["prefixes"] for c in spy)


def test_enable_disable_restores_exact_outputs():
    ids = torch.tensor([PREFIX + SUFFIXES[1]])
    for previous in ("eager", "sdpa"):
        model = make_model("llama", attn_implementation=previous)
        with torch.no_grad():
            before = model(ids).logits
        hf.enable(model)
        assert model.config._attn_implementation == "hydrogen"
        hf.generate(model, PREFIX, SUFFIXES[:2], max_new_tokens=4, **GEN)
        hf.disable(model)
        assert model.config._attn_implementation == previous
        with torch.no_grad():
            after = model(ids).logits
        assert torch.equal(before, after)
        with hf.enabled(model):
            assert hf.is_enabled(model)
        assert model.config._attn_implementation == previous


def test_plain_forward_with_hydrogen_is_stock_sdpa(spy):
    """Without a SharedPrefixCache, "hydrogen" is exactly stock sdpa attention."""
    model = make_model("llama")
    ids = torch.tensor([PREFIX + SUFFIXES[1]] * 2)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        with hf.enabled(model):
            out = model(ids, attention_mask=mask).logits
    assert torch.equal(ref, out)
    assert not spy


# ----------------------------------------------------------------------------------------
# Stock generate() shares prefixes by itself
# ----------------------------------------------------------------------------------------


def test_dropin_num_return_sequences_sampling(spy):
    model = make_model("qwen2")
    prompt = torch.tensor([PREFIX])
    stock, ours = with_and_without(
        model, lambda: model.generate(prompt, num_return_sequences=6, max_new_tokens=NEW, **SAMPLE), seed=5
    )
    assert torch.equal(ours, stock)
    assert not torch.equal(ours[0], ours[1])  # samples do differ
    # the prompt (all but the token generate() feeds) is one level of one span, read by all rows
    decode = [c for c in spy if c["q"][0] == 6]
    assert decode and all(c["prefixes"] == [(1, 2, len(PREFIX) - 1, 16)] for c in decode)


def test_dropin_repeated_prompt_greedy_and_cache_holds_prompt_once(spy):
    model = make_model("llama")
    ids = torch.tensor([PREFIX] * 8)
    kw = dict(max_new_tokens=NEW, return_dict_in_generate=True, **GEN)
    stock, ours = with_and_without(model, lambda: model.generate(ids, **kw))
    assert torch.equal(ours.sequences, stock.sequences)
    cache = ours.past_key_values
    assert isinstance(cache, hf.SharedPrefixCache)
    layer = cache.layers[0]
    assert [tuple(level.keys.shape) for level in layer.levels] == [(1, 2, len(PREFIX) - 1, 16)]
    # prefill: the shared span went through the model once (batch 1), not once per row
    assert spy[0]["q"] == (1, 4, len(PREFIX) - 1, 16)


def test_dropin_left_padded_prompts_multi_level(spy):
    """Different prompts with common leading spans, left-padded as a tokenizer gives them:
    the trie finds two levels; each shared span is prefilled once; tokens equal stock."""
    doc, q1, q2 = random_ids(30, seed=2), random_ids(7, seed=3), random_ids(4, seed=4)
    rows = [doc + q1 + random_ids(3, seed=s) for s in (5, 6)] + [doc + q2] * 3 + [doc + random_ids(2, seed=9)]
    ids, mask = left_padded(rows)
    model = make_model("mistral")
    stock, ours = with_and_without(model, lambda: model.generate(ids, attention_mask=mask, max_new_tokens=NEW, **GEN))
    assert torch.equal(ours, stock)
    prefill = [c["q"][:3] for c in spy if c["q"][2] > 1][::2]  # layer 0 of the 2 layers
    # level 0: doc once; level 1: q1, q2[:-1] and an empty span, once each; the 6 rows' tails
    assert prefill == [(1, 4, 30), (3, 4, 7), (6, 4, 2)]
    decode = [c for c in spy if c["q"][2] == 1 and c["q"][0] == len(rows)]
    assert decode[0]["prefixes"] == [(1, 2, 30, 16), (3, 2, 7, 16)]


def test_trie_builds_the_hierarchical_tree():
    shared = random_ids(30, seed=5)
    groups = [random_ids(n, seed=20 + n) for n in (4, 11, 2)]
    rows = [shared + g for g in groups for _ in range(3)]
    plan = hf.plan_sharing(rows)
    assert plan.levels == [[shared], groups]
    assert plan.parents == [[], [0, 0, 0]]
    assert plan.tails == [[]] * 9 and plan.tail_parents == [g for g in range(3) for _ in range(3)]
    # unbalanced: rows without a group get an empty span at level 1; lone tails stay per-row
    plan = hf.plan_sharing([shared + groups[0], shared + groups[0], shared + [7, 8], [9]])
    assert plan.levels == [[shared, []], [groups[0], [], []]]
    assert plan.parents == [[], [0, 0, 1]]
    assert plan.tails == [[], [], [7, 8], [9]]
    assert plan.tail_parents == [0, 0, 1, 2] and plan.tail_starts == [34, 34, 30, 0]
    assert not hf.plan_sharing([[1, 2], [3, 4]]).shared
    # a depth cap keeps deeper spans in the rows' own tails
    plan = hf.plan_sharing(rows, max_levels=1)
    assert plan.levels == [[shared]] and plan.tails == [g for g in groups for _ in range(3)]


def test_generate_hierarchical_equals_stock_and_shares_per_group(spy):
    model = make_model("llama")
    shared = random_ids(30, seed=5)
    groups = [random_ids(n, seed=20 + n) for n in (4, 11, 2)]
    n = 3
    out = hf.generate_hierarchical(model, shared, groups, num_return_sequences=n, max_new_tokens=16, **GEN)
    ids, mask = left_padded([shared + g for g in groups])
    stock = model.generate(
        ids.repeat_interleave(n, 0), attention_mask=mask.repeat_interleave(n, 0), max_new_tokens=16, **GEN
    )
    assert torch.equal(out, stock)
    decode = [c for c in spy if c["q"][2] == 1]
    # level 1 holds each group once, minus the last prompt token that generate() feeds
    assert decode[-1]["prefixes"] == [(1, 2, 30, 16), (3, 2, 10, 16)]


def test_nothing_shared_runs_stock_and_logs_once(spy, caplog):
    model = make_model("llama")
    ids, mask = left_padded([random_ids(9, seed=1), random_ids(5, seed=2)])
    hf.attention._logged.clear()
    with caplog.at_level(logging.WARNING, logger="hydrogen_ops.hf"):
        stock, ours = with_and_without(model, lambda: model.generate(ids, attention_mask=mask, max_new_tokens=8, **GEN))
        with hf.enabled(model):
            model.generate(ids, attention_mask=mask, max_new_tokens=8, **GEN)
    assert torch.equal(ours, stock)
    assert not spy
    msgs = [r.getMessage() for r in caplog.records if "no prefix sharing" in r.getMessage()]
    assert len(msgs) == 1 and "share no leading tokens" in msgs[0]


@pytest.mark.parametrize("mode", [dict(num_beams=2), dict(use_cache=False), dict(output_hidden_states=True),
                                  dict(position_ids=torch.arange(len(PREFIX)).repeat(2, 1) + 3)])
def test_modes_without_sharing_run_stock(mode, spy):
    model = make_model("llama")
    ids = torch.tensor([PREFIX] * 2)
    kw = dict(max_new_tokens=6, return_dict_in_generate=True, **mode, **GEN)
    stock, ours = with_and_without(model, lambda: model.generate(ids, **kw))
    assert torch.equal(ours.sequences, stock.sequences)
    assert not spy


# ----------------------------------------------------------------------------------------
# Silent-wrong paths of the explicit API, now refused or correct
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_prepared_batch_without_hydrogen_is_refused(attn):
    model = make_model("llama", attn_implementation=attn)
    with hf.enabled(model):
        batch = hf.prepare(model, PREFIX, SUFFIXES[:2])
    with pytest.raises(RuntimeError, match="hydrogen_ops.hf.enable"):
        model.generate(**batch.generate_kwargs(), max_new_tokens=4, **GEN)


def test_prepared_batch_reuse_is_refused():
    model = make_model("llama")
    with hf.enabled(model):
        batch = hf.prepare(model, PREFIX, SUFFIXES[:2])
        first = model.generate(**batch.generate_kwargs(), max_new_tokens=4, **GEN)
        assert first.shape[0] == 2
        with pytest.raises(RuntimeError, match="already used"):
            model.generate(**batch.generate_kwargs(), max_new_tokens=4, **GEN)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_encoding_suffixes(side):
    """Suffixes as a tokenizer returns them (padded, with attention_mask): pads are not tokens."""
    from transformers import BatchEncoding

    model = make_model("llama")
    width = max(len(s) for s in SUFFIXES)
    pad = lambda s: [0] * (width - len(s)) + s if side == "left" else s + [0] * (width - len(s))  # noqa: E731
    mask = lambda s: [0] * (width - len(s)) + [1] * len(s) if side == "left" else [1] * len(s) + [0] * (width - len(s))  # noqa: E731
    enc = BatchEncoding({"input_ids": torch.tensor([pad(s) for s in SUFFIXES]), "attention_mask": torch.tensor([mask(s) for s in SUFFIXES])})
    out = hf.generate(model, PREFIX, enc, max_new_tokens=NEW, **GEN)
    ref = stock_greedy(model, [PREFIX + s for s in SUFFIXES])
    for b in range(len(SUFFIXES)):
        assert torch.equal(out[b, -NEW:], ref[b]), b


@pytest.mark.parametrize("where", ["generation_config", "model.generation_config"])
def test_num_return_sequences_from_generation_config(where):
    model = make_model("llama")
    gc = transformers.GenerationConfig(num_return_sequences=3, max_new_tokens=8, **SAMPLE)
    if where == "generation_config":
        kw = {"generation_config": gc}
    else:
        model.generation_config = gc
        kw = {}
    torch.manual_seed(11)
    out = hf.generate(model, PREFIX, SUFFIXES[:2], **kw)
    ids, mask = left_padded([PREFIX + s for s in SUFFIXES[:2]])
    torch.manual_seed(11)
    stock = model.generate(ids, attention_mask=mask, **kw)
    assert out.shape[0] == 6
    assert torch.equal(out, stock)


def test_output_attentions_behaves_as_stock_sdpa(caplog):
    model = make_model("llama")
    ids = torch.tensor([PREFIX] * 2)
    kw = dict(max_new_tokens=4, output_attentions=True, return_dict_in_generate=True, **GEN)
    hf.attention._logged.clear()
    with caplog.at_level(logging.WARNING, logger="hydrogen_ops.hf"):
        stock, ours = with_and_without(model, lambda: model.generate(ids, **kw))
    assert torch.equal(ours.sequences, stock.sequences)
    assert type(ours.attentions) is type(stock.attentions)
    assert any("output_attentions" in r.getMessage() for r in caplog.records)


def test_rows_follow_stock_left_padded_layout():
    model = make_model("llama")
    out = hf.generate(model, PREFIX, SUFFIXES, num_return_sequences=2, max_new_tokens=NEW, **GEN)
    ids, mask = left_padded([PREFIX + s for s in SUFFIXES])
    stock = model.generate(
        ids.repeat_interleave(2, 0), attention_mask=mask.repeat_interleave(2, 0), max_new_tokens=NEW, **GEN
    )
    assert torch.equal(out, stock)
    # no pad between a row's prefix and its suffix
    width = ids.shape[1]
    for b, s in enumerate(SUFFIXES):
        assert out[2 * b, width - len(s) - len(PREFIX) : width].tolist() == PREFIX + s


def test_cache_used_by_non_hydrogen_attention_is_refused():
    """A SharedPrefixCache read by attention that does not receive it is an error, not a result."""
    model = make_model("llama")
    with hf.enabled(model):
        batch = hf.prepare(model, PREFIX, SUFFIXES[:2])
        pos = (batch.attention_mask.cumsum(-1) - 1)[:, -1:]
        with pytest.raises(RuntimeError, match="hydrogen_cache"), torch.no_grad():
            model(
                input_ids=batch.input_ids[:, -1:], attention_mask=batch.attention_mask, position_ids=pos,
                **{batch.cache_argument: batch.cache},
            )


# ----------------------------------------------------------------------------------------
# Logits
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_next_token_logits_fp32(family, spy):
    model = make_model(family)
    rows = [PREFIX + s for s in SUFFIXES for _ in range(2)]
    ref = stock_last_logits(model, rows)
    with hf.enabled(model):
        batch = hf.prepare(model, PREFIX, SUFFIXES, num_return_sequences=2)
        spy.clear()
        got = hydrogen_next_logits(model, batch)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    # level 0: the prefix once (P == 1); level 1: each suffix (but its last token) once
    assert spy and all(c["prefixes"][0] == (1, 2, len(PREFIX), 16) for c in spy)
    assert all(c["suffix"][0] == len(rows) for c in spy)


@pytest.mark.parametrize("family,dtype", [(f, torch.bfloat16) for f in FAMILIES] + [("llama", torch.float16)])
def test_next_token_logits_bf16_within_stock_bf16_error(family, dtype):
    rows = [PREFIX + s for s in SUFFIXES for _ in range(2)]
    ref32 = stock_last_logits(make_model(family), rows)
    model = make_model(family, dtype=dtype)
    stock_err = (stock_last_logits(model, rows) - ref32).abs().max().item()
    with hf.enabled(model):
        batch = hf.prepare(model, PREFIX, SUFFIXES, num_return_sequences=2)
        ours_err = (hydrogen_next_logits(model, batch) - ref32).abs().max().item()
    # bf16 rounds at many points; allow 1.5x the error stock bf16 itself shows against fp32.
    assert ours_err <= 1.5 * stock_err, (ours_err, stock_err)


def test_decode_step_logits_match_stock():
    """Logits of every decoding step (not only the first) match stock per-sequence runs."""
    model = make_model("llama")
    kw = dict(max_new_tokens=8, output_logits=True, return_dict_in_generate=True, **GEN)
    out = hf.generate(model, PREFIX, SUFFIXES[:3], **kw)
    ours = torch.stack(out.logits, 1)  # [B, steps, V]
    for b, s in enumerate(SUFFIXES[:3]):
        ref = model.generate(torch.tensor([PREFIX + s]), **kw)
        torch.testing.assert_close(ours[b], torch.stack(ref.logits, 1)[0], atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------
# Generation through the explicit API
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_identical_tokens(family, spy):
    model = make_model(family)
    ref1 = stock_greedy(model, [PREFIX])[0]
    out1 = hf.generate(model, PREFIX, max_new_tokens=NEW, **GEN)
    assert torch.equal(out1[0, len(PREFIX) :], ref1)
    stock8 = model.generate(torch.tensor([PREFIX] * 8), max_new_tokens=NEW, **GEN)
    out8 = hf.generate(model, PREFIX, num_return_sequences=8, max_new_tokens=NEW, **GEN)
    assert torch.equal(out8, stock8)
    spy.clear()
    ref = stock_greedy(model, [PREFIX + s for s in SUFFIXES])
    out = hf.generate(model, PREFIX, SUFFIXES, max_new_tokens=NEW, **GEN)
    for b in range(len(SUFFIXES)):
        assert torch.equal(out[b, -NEW:], ref[b]), b
    assert spy, "hydragen_attention was not used"


def test_eos_pad_streamer_stopping_criteria():
    from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
    from transformers.generation.streamers import BaseStreamer

    class Collect(BaseStreamer):
        def __init__(self):
            self.chunks = []

        def put(self, value):
            self.chunks.append(value.clone())

        def end(self):
            self.ended = True

    class StopAfter(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.limit, dtype=torch.bool)

    model = make_model("llama")
    rows = [PREFIX + SUFFIXES[0]] * 8
    probe = model.generate(torch.tensor(rows[:1]), max_new_tokens=12, **GEN)[0, len(rows[0]) :]
    eos = int(probe[5])
    stop = StopAfter()
    stop.limit = len(rows[0]) + 20
    kw = dict(max_new_tokens=40, do_sample=True, top_k=8, eos_token_id=eos, pad_token_id=0)
    torch.manual_seed(7)
    s1 = Collect()
    stock = model.generate(torch.tensor(rows), streamer=s1, stopping_criteria=StoppingCriteriaList([stop]), **kw)
    torch.manual_seed(7)
    s2 = Collect()
    ours = hf.generate(
        model, PREFIX, [SUFFIXES[0]], num_return_sequences=8, streamer=s2,
        stopping_criteria=StoppingCriteriaList([stop]), **kw,
    )
    assert torch.equal(ours, stock)
    assert ours.shape[1] <= stop.limit
    assert len(s1.chunks) == len(s2.chunks) and all(torch.equal(a, b) for a, b in zip(s1.chunks, s2.chunks))
    assert s2.ended


# ----------------------------------------------------------------------------------------
# KV memory
# ----------------------------------------------------------------------------------------


def test_kv_bytes_hold_prefix_once():
    model = make_model("llama")
    cfg = model.config
    L, Hkv, D, es = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads, 4
    n_seq, new = 8, 10
    sufs = [SUFFIXES[0], SUFFIXES[1]]  # 3 and 9 tokens, distinct first tokens
    with hf.enabled(model):
        batch = hf.prepare(model, PREFIX, sufs, num_return_sequences=4, max_new_tokens=new)
    got = batch.cache.kv_bytes()
    # level 0: the prefix once; level 1: each suffix but its last token, once per suffix
    assert got["prefix"] == L * 2 * Hkv * D * es * (len(PREFIX) + 2 * (max(len(s) for s in sufs) - 1))
    # per-sequence buffers: allocated up front for the token generate() feeds + the new tokens
    assert got["suffix"] == L * 2 * n_seq * Hkv * (1 + new) * D * es
    assert got["suffix_used"] == 0
    with hf.enabled(model):
        model.generate(**batch.generate_kwargs(), max_new_tokens=new, **GEN)
    got = batch.cache.kv_bytes()
    assert got["suffix"] == L * 2 * n_seq * Hkv * (1 + new) * D * es  # no reallocation while decoding
    assert got["suffix_used"] == L * 2 * n_seq * Hkv * new * D * es  # the last new token is not fed back
    stock = transformers.DynamicCache(config=cfg)
    ids = torch.tensor([PREFIX + sufs[1]] * n_seq)
    with torch.no_grad():
        model(ids, past_key_values=stock, use_cache=True)
    stock_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in stock.layers)
    assert got["total"] * 2 < stock_bytes


# ----------------------------------------------------------------------------------------
# Unsupported features, gated by feature
# ----------------------------------------------------------------------------------------


def test_unsupported_generate_modes_raise():
    model = make_model("llama")
    with pytest.raises(hf.HydrogenUnsupportedError, match="beam"):
        hf.generate(model, PREFIX, num_beams=2, max_new_tokens=4)
    with pytest.raises(hf.HydrogenUnsupportedError, match="assisted"):
        hf.generate(model, PREFIX, assistant_model=make_model("llama"), max_new_tokens=4)
    with pytest.raises(hf.HydrogenUnsupportedError, match="contrastive"):
        hf.generate(model, PREFIX, penalty_alpha=0.6, top_k=4, max_new_tokens=4)
    with hf.enabled(model):
        batch = hf.prepare(model, PREFIX, SUFFIXES[:2])
        with pytest.raises(hf.HydrogenUnsupportedError):
            model.generate(**batch.generate_kwargs(), num_beams=2, max_new_tokens=4, **GEN)
        batch = hf.prepare(model, PREFIX, SUFFIXES[:2])
        with pytest.raises(hf.HydrogenUnsupportedError):
            model.generate(**batch.generate_kwargs(), num_return_sequences=2, max_new_tokens=4, **SAMPLE)
    for method, arg in (("reorder_cache", torch.tensor([0])), ("batch_repeat_interleave", 2), ("crop", -1)):
        with pytest.raises(hf.HydrogenUnsupportedError):
            getattr(batch.cache, method)(arg)


def test_softcapping_sinks_and_non_interface_models_are_refused():
    gemma2 = make_model("gemma2", attn_implementation="eager")
    with pytest.raises(hf.HydrogenUnsupportedError, match="softcapping"):
        hf.enable(gemma2)
    with pytest.raises(hf.HydrogenUnsupportedError, match="softcapping"):
        hf.generate(gemma2, PREFIX, max_new_tokens=4)
    assert gemma2.config._attn_implementation != "hydrogen"
    llama = make_model("llama")
    llama.model.layers[0].self_attn.sinks = torch.nn.Parameter(torch.zeros(4))
    with pytest.raises(hf.HydrogenUnsupportedError, match="sinks"):
        hf.enable(llama)
    stablelm = transformers.StableLmForCausalLM(
        transformers.StableLmConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=1)
    )
    with pytest.raises(hf.HydrogenUnsupportedError, match="AttentionInterface"):
        hf.enable(stablelm)
    q, k = torch.randn(1, 4, 3, 16), torch.randn(1, 2, 3, 16)
    module = make_model("llama").model.layers[0].self_attn
    with pytest.raises(hf.HydrogenUnsupportedError, match="softcap"):
        hf.hydrogen_attention_forward(module, q, k, k, None, scaling=0.25, softcap=50.0)
    with pytest.raises(hf.HydrogenUnsupportedError, match="sink"):
        hf.hydrogen_attention_forward(module, q, k, k, None, scaling=0.25, s_aux=torch.zeros(4))


def test_sliding_window_shorter_than_sequence_runs_stock(spy, caplog):
    model = make_model("mistral", sliding_window=64)
    ids = torch.tensor([random_ids(40, seed=3)] * 3)
    stock, ours = with_and_without(model, lambda: model.generate(ids, max_new_tokens=16, **GEN))
    assert torch.equal(ours, stock) and spy  # within the window: shared
    spy.clear()
    hf.attention._logged.clear()
    with caplog.at_level(logging.WARNING, logger="hydrogen_ops.hf"):
        stock, ours = with_and_without(model, lambda: model.generate(ids, max_new_tokens=40, **GEN))
    assert torch.equal(ours, stock) and not spy  # beyond it: stock attention, logged
    assert any("sliding window" in r.getMessage() for r in caplog.records)
    with hf.enabled(model), pytest.raises(hf.HydrogenUnsupportedError, match="sliding window"):
        hf.prepare(model, ids[0], max_new_tokens=40)


@pytest.mark.parametrize("rope", [{"rope_type": "dynamic", "factor": 2.0}, {"rope_type": "linear", "factor": 2.0}])
def test_length_dependent_rope_runs_stock(rope, spy):
    model = make_model("llama", rope_parameters={"rope_theta": 10000.0, **rope})
    ids = torch.tensor([PREFIX] * 3)
    stock, ours = with_and_without(model, lambda: model.generate(ids, max_new_tokens=8, **GEN))
    assert torch.equal(ours, stock)
    assert bool(spy) == (rope["rope_type"] == "linear")  # linear scaling does not depend on length


# ----------------------------------------------------------------------------------------
# Many families, gated by feature only
# ----------------------------------------------------------------------------------------

WIDE_FAMILIES = sorted(set(FAMILY_OVERRIDES) - {"gemma2"})


def test_supported_model_types_are_the_tested_families():
    assert hf.SUPPORTED_MODEL_TYPES == frozenset(WIDE_FAMILIES)


@pytest.mark.parametrize("family", WIDE_FAMILIES)
def test_family_dropin_greedy_equals_stock(family, spy):
    model = make_model(family)
    doc = random_ids(24, seed=1)
    rows = [doc + random_ids(4, seed=2)] * 2 + [doc + random_ids(6, seed=3), doc + random_ids(1, seed=4)]
    ids, mask = left_padded(rows)
    stock, ours = with_and_without(model, lambda: model.generate(ids, attention_mask=mask, max_new_tokens=12, **GEN))
    assert torch.equal(ours, stock)
    assert any(c["prefixes"] for c in spy)


# ----------------------------------------------------------------------------------------
# torch.compile
# ----------------------------------------------------------------------------------------


def test_compiled_decode_fullgraph_bounded_recompiles():
    """The decode step under sharing traces as one graph (fullgraph=True), is not recompiled
    per step or per call of the same shapes, and gives stock tokens."""
    model = make_model("llama")
    rows = [PREFIX + s for s in SUFFIXES]
    ids, mask = left_padded(rows)
    kw = dict(attention_mask=mask, num_return_sequences=2, max_new_tokens=24, return_dict_in_generate=True, **SAMPLE)
    torch.manual_seed(3)
    stock = model.generate(ids, **kw).sequences
    graphs = []

    def count_graphs(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with hf.enabled(model):
        model.forward = torch.compile(model.forward, fullgraph=True, backend=count_graphs)
        try:
            torch.manual_seed(3)
            ours = model.generate(ids, **kw)
            first_call = len(graphs)
            torch.manual_seed(3)
            again = model.generate(ids, **kw)
        finally:
            del model.forward
    assert torch.equal(ours.sequences, stock) and torch.equal(again.sequences, stock)
    assert isinstance(ours.past_key_values, hf.SharedPrefixCache)
    assert 1 <= first_call <= 2, first_call  # 2: the first step specializes a length that then varies
    assert len(graphs) == first_call


# ----------------------------------------------------------------------------------------
# CUDA
# ----------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_dropin_greedy(dtype, spy):
    model = make_model("llama", dtype=dtype).cuda()
    ids, mask = left_padded([PREFIX + s for s in SUFFIXES])
    ids, mask = ids.cuda(), mask.cuda()
    stock, ours = with_and_without(
        model, lambda: model.generate(ids, attention_mask=mask, num_return_sequences=2, max_new_tokens=16, **GEN)
    )
    assert ours.is_cuda and spy
    if dtype == torch.float32:
        assert torch.equal(ours, stock)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_decode():
    """The shared decode step replays under CUDA graphs (mode="reduce-overhead"): fixed-shape
    inputs, a preallocated per-sequence segment; tokens equal stock."""
    model = make_model("llama").cuda()
    ids, mask = left_padded([PREFIX + s for s in SUFFIXES])
    ids, mask = ids.cuda(), mask.cuda()
    kw = dict(attention_mask=mask, max_new_tokens=24, **GEN)
    stock = model.generate(ids, **kw)
    torch._dynamo.reset()
    with hf.enabled(model):
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
        try:
            ours = [model.generate(ids, **kw) for _ in range(2)]
        finally:
            del model.forward
    assert all(torch.equal(o, stock) for o in ours)


def test_other_transformers_versions_are_refused_clearly(monkeypatch):
    """paged|hydrogen reads 5.17's paged cache: another engine gets a clear refusal, not an
    attribute error deep inside the generation loop."""
    from hydrogen_ops.hf import HydrogenUnsupportedError, _compat

    model = make_model("llama", attn_implementation="paged|hydrogen")
    monkeypatch.setattr(_compat.transformers, "__version__", "5.18.0")
    with pytest.raises(HydrogenUnsupportedError, match=r"transformers 5\.17.*5\.18\.0 is installed"):
        model(torch.tensor([random_ids(5, 0)]))
