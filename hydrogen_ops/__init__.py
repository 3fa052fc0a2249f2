"""Hydrogen: shared-prefix (Hydragen) attention ops for PyTorch.

Layout follows ``torch.nn.functional.scaled_dot_product_attention``:
``[batch, heads, seq, head_dim]``. Every op returns ``(out, lse)`` where ``lse`` is the
float32, natural-log log-sum-exp of the scaled scores, shape ``[batch, q_heads, q_len]``.
A query row that sees no key gets ``out = 0`` and ``lse = -inf``.
"""

from hydrogen_ops import _build_compat
from hydrogen_ops._version import __version__

# The extension is loaded here, after its build is checked against the installed torch,
# so a build for another torch names its fix instead of failing in the dynamic loader.
_build = _build_compat.load_extension()
if _build is not None:
    __version__ = f"{__version__}+{_build.tag}"

from hydrogen_ops import ops  # noqa: E402
from hydrogen_ops.ops import (  # noqa: E402
    hydragen_attention,
    merge_attention,
    paged_prefix_attention,
    paged_suffix_attention,
    prefix_attention,
    suffix_attention,
)

__all__ = list(ops.__all__)
