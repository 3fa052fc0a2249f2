"""OpenAI-compatible server with continuous batching and Hydrogen attention.

    python -m hydrogen_ops.serve MODEL_DIR [transformers serve options]

Runs transformers' own server (``transformers serve``: ``/v1/chat/completions``,
``/v1/completions``, ``/v1/models``, ``/health``) on ``MODEL_DIR`` with ``--continuous-batching``
and ``attn_implementation="paged|hydrogen"``: requests that share a prompt prefix (a system
prompt, a document) share its KV blocks in the paged cache, and each decode step attends over a
shared run once for all the requests below it (see :mod:`hydrogen_ops.hf.paged`).

CUDA graphs are off unless ``--cb-use-cuda-graph`` is given (paged|hydrogen plans each step on
the host). Any other ``transformers serve`` option passes through (``--host``, ``--port``,
``--cb-block-size``, ``--cb-num-blocks``, ``--device``, ...). ``--attn-implementation`` may name
another paged implementation (e.g. ``paged|sdpa``) to compare against. Needs the serving extra
of transformers: ``pip install "transformers[serving]"``.
"""

from __future__ import annotations

import sys
from typing import List, Optional

DEFAULT_ATTN_IMPLEMENTATION = "paged|hydrogen"
USAGE = "usage: python -m hydrogen_ops.serve MODEL_DIR [transformers serve options]"


def _accept_paged_implementations() -> None:
    """transformers serve validates ``--attn-implementation`` against a fixed list that has no
    ``paged|`` names. Accept any ``paged|<name>`` registered with ``AttentionInterface`` (the
    model is then loaded with it and continuous batching keeps it), defer to the stock check
    otherwise."""
    from transformers import AttentionInterface
    from transformers.cli.serving import model_manager

    stock = model_manager.ModelManager
    if getattr(stock, "_hydrogen_accepts_paged", False):
        return

    class ModelManager(stock):
        _hydrogen_accepts_paged = True

        def _validate_args(self):
            name = self.attn_implementation
            if isinstance(name, str) and name.startswith("paged|"):
                if name not in AttentionInterface._global_mapping:
                    raise ValueError(
                        f"--attn-implementation {name!r} is not a registered paged attention implementation; "
                        f"registered: {sorted(k for k in AttentionInterface._global_mapping if k.startswith('paged|'))}"
                    )
                saved, self.attn_implementation = self.attn_implementation, None
                try:
                    super()._validate_args()
                finally:
                    self.attn_implementation = saved
                return
            super()._validate_args()

    model_manager.ModelManager = ModelManager


def _serve_app():
    """A CLI app whose ``serve`` command is transformers' ``Serve`` (same options) that, once the
    server has stopped (Ctrl-C / SIGINT / SIGTERM), also stops the continuous-batching manager and
    unloads the model: stock ``transformers serve`` leaves that thread running, so the process
    would not exit."""
    import functools

    from huggingface_hub import typer_factory
    from transformers.cli.serve import Serve

    class HydrogenServe(Serve):
        @functools.wraps(Serve.__init__)
        def __init__(self, *args, **kwargs):
            try:
                super().__init__(*args, **kwargs)
            finally:
                if hasattr(self, "_generation_state"):
                    self._generation_state.shutdown()
                if hasattr(self, "_model_manager"):
                    self._model_manager.shutdown()

    HydrogenServe.__doc__ = Serve.__doc__
    app = typer_factory(help="python -m hydrogen_ops.serve")
    app.command(name="serve")(HydrogenServe)
    return app


def serve_argv(argv: List[str]) -> List[str]:
    """The ``transformers serve`` command line for ``argv`` (MODEL_DIR first, then options)."""
    if not argv or argv[0].startswith("-"):
        raise SystemExit(USAGE)
    args = ["serve", argv[0], *argv[1:]]
    if "--continuous-batching" not in args and "--no-continuous-batching" not in args:
        args.append("--continuous-batching")
    if not any(a == "--attn-implementation" or a.startswith("--attn-implementation=") for a in args):
        args += ["--attn-implementation", DEFAULT_ATTN_IMPLEMENTATION]
    if "--cb-use-cuda-graph" not in args and "--no-cb-use-cuda-graph" not in args:
        args.append("--no-cb-use-cuda-graph")  # paged|hydrogen plans each step on the host
    return args


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    args = serve_argv(argv)
    import hydrogen_ops.hf  # noqa: F401  (registers paged|hydrogen)
    from hydrogen_ops.hf._compat import continuous_batching_unsupported
    from hydrogen_ops.hf.paged import STATS

    if any(a.endswith("paged|hydrogen") for a in args) and continuous_batching_unsupported() is not None:
        sys.exit(f"hydrogen_ops.serve: {continuous_batching_unsupported()}")

    _accept_paged_implementations()
    import click

    try:
        _serve_app()(args, standalone_mode=False)
    except (KeyboardInterrupt, click.exceptions.Abort):
        pass  # uvicorn re-raises the Ctrl-C / SIGINT it handled once the server has shut down
    finally:
        if STATS["steps"]:
            print(f"hydrogen_ops.serve: {STATS['steps']} paged|hydrogen steps, "
                  f"{STATS['decode_steps_with_shared_prefix']} decoded shared prefixes once for their requests "
                  f"({STATS['key_reads_saved']} key reads per layer saved)", file=sys.stderr)


if __name__ == "__main__":
    main()
