"""HuggingFace transformers integration: shared-prefix generation with stock ``generate()``.

Importing this package registers an attention implementation named ``"hydrogen"`` with
transformers' ``AttentionInterface`` (and a mask function with ``AttentionMaskInterface``).
With it enabled (:func:`enable`, :func:`enabled`, ``model.set_attn_implementation("hydrogen")``
or ``from_pretrained(..., attn_implementation="hydrogen")``), stock ``model.generate()`` finds
the prefixes its rows share (``num_return_sequences``, repeated prompts, left-padded prompts
with common leading spans, several levels), prefills each shared span once into a
:class:`SharedPrefixCache` and decodes with :func:`hydrogen_ops.hydragen_attention`. Tokens
equal stock generation's. Where nothing is shared, stock attention runs (logged once).

Layout:

* :mod:`.attention`: the attention function, its registration, :func:`enable`/:func:`disable`;
* :mod:`.cache`: :class:`SharedPrefixCache`;
* :mod:`.trie`: prefix detection (a radix tree over the batch);
* :mod:`.generation`: the ``generate()`` prefill hook, :func:`prepare`, :func:`generate`,
  :func:`generate_hierarchical`;
* :mod:`.checks`: which models qualify, judged by feature (softcapping, sinks, sliding
  window, length-dependent RoPE, ``AttentionInterface`` dispatch).

Tested with transformers 5.17 and 5.18; newer versions get a warning. The README's
"HuggingFace" section has a runnable example (tested by tests/test_readme.py).
"""

try:
    import transformers  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        'hydrogen_ops.hf needs HuggingFace transformers; install it with: pip install "hydrogen_ops[hf]"'
    ) from exc

from ._compat import SUPPORTED_TRANSFORMERS, check_transformers_version

check_transformers_version()

from .attention import (  # noqa: E402
    disable,
    enable,
    enabled,
    hydrogen_attention_forward,
    hydrogen_mask,
    is_enabled,
    register,
)
from .cache import ATTN_IMPLEMENTATION, CACHE_KWARG, SharedPrefixCache  # noqa: E402
from .checks import SUPPORTED_MODEL_TYPES, HydrogenUnsupportedError  # noqa: E402
from .generation import PreparedBatch, generate, generate_hierarchical, install_generate_hook, prepare  # noqa: E402
from .trie import SharingPlan, plan_sharing  # noqa: E402
from . import paged  # noqa: E402,F401  (registers attn_implementation="paged|hydrogen")

register()
install_generate_hook()

__all__ = [
    "ATTN_IMPLEMENTATION",
    "CACHE_KWARG",
    "SUPPORTED_TRANSFORMERS",
    "SUPPORTED_MODEL_TYPES",
    "HydrogenUnsupportedError",
    "SharedPrefixCache",
    "SharingPlan",
    "PreparedBatch",
    "enable",
    "disable",
    "enabled",
    "is_enabled",
    "plan_sharing",
    "prepare",
    "generate",
    "generate_hierarchical",
    "hydrogen_attention_forward",
]
