"""Tests of the HuggingFace integration (hydrogen_ops.hf) on tiny random-weight models."""

from __future__ import annotations

import os
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

sys.path.insert(0, os.path.dirname(__file__))
import hydrogen_ops  # noqa: E402
import hydrogen_ops.hf as hf  # noqa: E402
from hf_models import FAMILIES, make_model, random_ids  # noqa: E402

NEW = 32  # new tokens in the greedy tests
GEN = dict(do_sample=False, pad_token_id=0, eos_token_id=None)


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
            past_key_values=batch.cache,
        )
    return out.logits[:, -1].float()


PREFIX = random_ids(48, seed=1)
SUFFIXES = [random_ids(n, seed=10 + n) for n in (3, 9, 1, 5)]


# ----------------------------------------------------------------------------------------
# Registration, enable/disable
# ----------------------------------------------------------------------------------------


def test_import_hydrogen_ops_does_not_import_transformers():
    import subprocess

    code = "import sys, hydrogen_ops; assert 'transformers' not in sys.modules, 'transformers imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registered_with_attention_and_mask_interfaces():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    assert "hydrogen" in AttentionInterface().valid_keys()
    assert "hydrogen" in AttentionMaskInterface._global_mapping


def test_from_pretrained_and_set_attn_implementation(tmp_path):
    model = make_model("llama")
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="hydrogen")
    assert loaded.config._attn_implementation == "hydrogen"
    model.set_attn_implementation("hydrogen")
    assert hf.is_enabled(model)


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
        with torch.no_grad():
            assert torch.equal(model(ids).logits, before)


def test_plain_forward_with_hydrogen_is_stock_sdpa(spy):
    """Without a SharedPrefixCache, "hydrogen" is exactly stock sdpa attention."""
    model = make_model("llama")
    ids = torch.tensor([PREFIX + SUFFIXES[1]] * 2)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        gen_ref = model.generate(ids, attention_mask=mask, max_new_tokens=8, **GEN)
        with hf.enabled(model):
            out = model(ids, attention_mask=mask).logits
            gen = model.generate(ids, attention_mask=mask, max_new_tokens=8, **GEN)
    assert torch.equal(ref, out)
    assert torch.equal(gen, gen_ref)
    assert not spy


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
    # the shared prefix went to the ops once (P == 1), never as a per-sequence copy
    assert spy and all(c["prefixes"] == [(1, 2, len(PREFIX), 16)] for c in spy)
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
# Generation
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_identical_tokens(family, spy):
    model = make_model(family)
    # batch 1, prefix only
    ref1 = stock_greedy(model, [PREFIX])[0]
    out1 = hf.generate(model, PREFIX, max_new_tokens=NEW, **GEN)
    assert out1.shape == (1, len(PREFIX) + NEW)
    assert torch.equal(out1[0, : len(PREFIX)], torch.tensor(PREFIX))
    assert torch.equal(out1[0, len(PREFIX) :], ref1)
    # batch 8, one prefix: equals stock generation of the expanded batch
    stock8 = model.generate(torch.tensor([PREFIX] * 8), max_new_tokens=NEW, **GEN)
    out8 = hf.generate(model, PREFIX, num_return_sequences=8, max_new_tokens=NEW, **GEN)
    assert torch.equal(out8, stock8)
    # suffixes of different lengths: equals per-sequence stock runs
    spy.clear()
    ref = stock_greedy(model, [PREFIX + s for s in SUFFIXES])
    out = hf.generate(model, PREFIX, SUFFIXES, max_new_tokens=NEW, **GEN)
    for b in range(len(SUFFIXES)):
        assert torch.equal(out[b, -NEW:], ref[b]), b
    assert spy, "hydragen_attention was not used"


def test_sampling_fixed_seed_identical():
    model = make_model("qwen2")
    kw = dict(max_new_tokens=NEW, do_sample=True, top_k=30, temperature=0.9, pad_token_id=0, eos_token_id=None)
    suffix = [random_ids(6, seed=s) for s in (3, 4)]
    rows = torch.tensor([PREFIX + s for s in suffix for _ in range(4)])
    torch.manual_seed(123)
    stock = model.generate(rows, **kw)
    torch.manual_seed(123)
    ours = hf.generate(model, PREFIX, suffix, num_return_sequences=4, **kw)
    assert torch.equal(ours, stock)
    assert not torch.equal(ours[0], ours[1])  # samples do differ


def test_eos_pad_streamer_stopping_criteria():
    from transformers.generation.streamers import BaseStreamer
    from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList

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
    # pick an eos that greedy/sampling actually produces, to exercise eos/pad handling
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
    assert len(s1.chunks) == len(s2.chunks) and all(torch.equal(a, b) for a, b in zip(s1.chunks[1:], s2.chunks[1:]))
    assert s2.ended


def test_hierarchical_sharing():
    model = make_model("llama")
    shared = random_ids(30, seed=5)
    groups = [random_ids(n, seed=20 + n) for n in (4, 11, 1)]  # the 1-token group ends up empty in level 1
    n = 3
    out = hf.generate_hierarchical(model, shared, groups, num_return_sequences=n, max_new_tokens=16, **GEN)
    ref = stock_greedy(model, [shared + g for g in groups], new=16)
    for g in range(len(groups)):
        for j in range(n):
            assert torch.equal(out[g * n + j, -16:], ref[g])
    # cache layout: level 0 stored once, level 1 once per group
    with hf.enabled(model):
        batch = hf._prepare_tree(
            model, [[shared], groups, [[] for _ in range(len(groups) * n)]],
            [None, [0] * len(groups), [g for g in range(len(groups)) for _ in range(n)]],
        )
    layer = batch.cache.layers[0]
    # (each group's last token moves to its samples' own segment, see prepare())
    assert [tuple(lv.keys.shape) for lv in layer.levels] == [(1, 2, 30, 16), (3, 2, 10, 16)]
    assert layer.levels[1].lens_host == [3, 10, 0]
    assert batch.cache.batch_size == len(groups) * n


# ----------------------------------------------------------------------------------------
# KV memory
# ----------------------------------------------------------------------------------------


def test_kv_bytes_hold_prefix_once():
    model = make_model("llama")
    cfg = model.config
    L, Hkv, D, es = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads, 4
    n_seq, new = 8, 10
    sufs = SUFFIXES[:2]
    with hf.enabled(model):
        batch = hf.prepare(model, PREFIX, sufs, num_return_sequences=4, max_new_tokens=new)
    width = max(len(s) for s in sufs)
    got = batch.cache.kv_bytes()
    assert got["prefix"] == L * 2 * 1 * Hkv * len(PREFIX) * D * es  # one copy of the prefix
    assert got["suffix"] == L * 2 * n_seq * Hkv * (width + new + 1) * D * es
    assert got["suffix_used"] == L * 2 * Hkv * D * es * sum(len(s) - 1 for s in sufs for _ in range(4))
    # stock DynamicCache holds the prefix once per sequence
    stock = transformers.DynamicCache(config=cfg)
    ids = torch.tensor([PREFIX + sufs[1]] * n_seq)
    with torch.no_grad():
        model(ids, past_key_values=stock, use_cache=True)
    stock_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in stock.layers)
    assert stock_bytes == L * 2 * n_seq * Hkv * ids.shape[1] * D * es
    assert got["prefix"] * n_seq < stock_bytes + got["suffix"]


# ----------------------------------------------------------------------------------------
# Unsupported features
# ----------------------------------------------------------------------------------------


def test_unsupported_generate_modes_raise():
    model = make_model("llama")
    with pytest.raises(hf.HydrogenUnsupportedError, match="beam"):
        hf.generate(model, PREFIX, num_beams=2, max_new_tokens=4)
    with pytest.raises(hf.HydrogenUnsupportedError, match="assisted"):
        hf.generate(model, PREFIX, assistant_model=make_model("llama"), max_new_tokens=4)
    with pytest.raises(hf.HydrogenUnsupportedError, match="contrastive"):
        hf.generate(model, PREFIX, penalty_alpha=0.6, top_k=4, max_new_tokens=4)
    # stock generate() with a SharedPrefixCache and batch reshaping (beams / num_return_sequences)
    with hf.enabled(model):
        batch = hf.prepare(model, PREFIX, SUFFIXES[:2])
        with pytest.raises(hf.HydrogenUnsupportedError):
            model.generate(**batch.generate_kwargs(), num_beams=2, max_new_tokens=4, **GEN)
        batch = hf.prepare(model, PREFIX, SUFFIXES[:2])
        with pytest.raises(hf.HydrogenUnsupportedError):
            model.generate(
                **batch.generate_kwargs(), num_return_sequences=2, do_sample=True, max_new_tokens=4, pad_token_id=0
            )
    for method, arg in (("reorder_cache", torch.tensor([0])), ("batch_repeat_interleave", 2), ("crop", -1)):
        with pytest.raises(hf.HydrogenUnsupportedError):
            getattr(batch.cache, method)(arg)


def test_wrong_attention_mask_is_refused():
    model = make_model("llama")
    with hf.enabled(model):
        batch = hf.prepare(model, PREFIX, SUFFIXES[:2])
        ones = torch.ones_like(batch.attention_mask)
        with pytest.raises(RuntimeError, match="attention_mask"):
            model.generate(batch.input_ids, attention_mask=ones, past_key_values=batch.cache, max_new_tokens=4, **GEN)
        # a bare cache fed a left-padded batch by stock generate(): refused at the prefill step
        ids = torch.tensor([[0, 0] + PREFIX[:6], PREFIX[:8]])
        mask = (ids != 0).long()
        with pytest.raises(RuntimeError, match="attention_mask"):
            model.generate(ids, attention_mask=mask, past_key_values=hf.SharedPrefixCache(batch_size=2), max_new_tokens=2, **GEN)
        # ... while an unpadded batch in a bare cache is plain exact attention
        ids = torch.tensor([PREFIX[:8], PREFIX[8:16]])
        ref = model.generate(ids, max_new_tokens=6, **GEN)
        got = model.generate(ids, past_key_values=hf.SharedPrefixCache(batch_size=2), max_new_tokens=6, **GEN)
        assert torch.equal(got, ref)


def test_unsupported_families_and_features_raise():
    gemma = make_model("gemma2")
    with pytest.raises(hf.HydrogenUnsupportedError, match="gemma2"):
        hf.enable(gemma)
    with pytest.raises(hf.HydrogenUnsupportedError, match="gemma2"):
        hf.generate(gemma, PREFIX, max_new_tokens=4)
    assert gemma.config._attn_implementation != "hydrogen"
    gemma3 = transformers.Gemma3ForCausalLM(
        transformers.Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    )
    with pytest.raises(hf.HydrogenUnsupportedError, match="gemma3"):
        hf.enable(gemma3)
    # softcapping / attention sinks passed to the attention function
    q = torch.randn(1, 4, 3, 16)
    k = torch.randn(1, 2, 3, 16)
    module = make_model("llama").model.layers[0].self_attn
    with pytest.raises(hf.HydrogenUnsupportedError, match="softcap"):
        hf.hydrogen_attention_forward(module, q, k, k, None, scaling=0.25, softcap=50.0)
    with pytest.raises(hf.HydrogenUnsupportedError, match="sink"):
        hf.hydrogen_attention_forward(module, q, k, k, None, scaling=0.25, s_aux=torch.zeros(4))


def test_sliding_window_beyond_window_raises_within_window_exact():
    model = make_model("mistral", sliding_window=64)
    short = random_ids(40, seed=3)
    ref = stock_greedy(model, [short], new=16)[0]
    assert torch.equal(hf.generate(model, short, max_new_tokens=16, **GEN)[0, -16:], ref)
    with pytest.raises(hf.HydrogenUnsupportedError, match="sliding window"):
        hf.generate(model, short, max_new_tokens=40, **GEN)


def test_version_gate(monkeypatch):
    monkeypatch.setattr(transformers, "__version__", "5.16.0")
    monkeypatch.delenv("HYDROGEN_HF_SKIP_VERSION_CHECK", raising=False)
    with pytest.raises(ImportError, match="5.17"):
        hf._check_transformers_version()
    monkeypatch.setattr(transformers, "__version__", "5.18.2")
    hf._check_transformers_version()


# ----------------------------------------------------------------------------------------
# The documented example
# ----------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_greedy_and_logits(dtype):
    model = make_model("llama", dtype=dtype).cuda()
    rows = [PREFIX + s for s in SUFFIXES]
    new = 16
    out = hf.generate(model, torch.tensor(PREFIX).cuda(), SUFFIXES, max_new_tokens=new, **GEN)
    assert out.is_cuda
    with hf.enabled(model):
        batch = hf.prepare(model, PREFIX, SUFFIXES)
        got = hydrogen_next_logits(model, batch).cpu()
    with torch.no_grad():
        ref = torch.stack([model(torch.tensor([r]).cuda()).logits[0, -1].float().cpu() for r in rows])
    if dtype == torch.float32:
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
        for b, r in enumerate(rows):
            stock = model.generate(torch.tensor([r]).cuda(), max_new_tokens=new, **GEN)[0, len(r) :]
            assert torch.equal(out[b, -new:], stock)
    else:
        ref32 = stock_last_logits(make_model("llama"), rows)
        assert (got - ref32).abs().max() <= 1.5 * (ref - ref32).abs().max()
