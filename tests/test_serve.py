"""``python -m hydrogen_ops.serve``: transformers' OpenAI-compatible server with continuous
batching and paged|hydrogen, on a tiny random model with a word-level tokenizer built here (no
hub). Concurrent chat requests sharing a system prompt must get the answers that the same
server gives with paged|sdpa."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_models import make_model  # noqa: E402

WORDS = [f"w{i}" for i in range(150)]
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_model_dir(path):
    """A tiny random Llama plus a word-level tokenizer (``tokenizers``) saved as a model folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    # eos 2 = "</s>"; vocab 160 covers the 157 tokens
    model = make_model("llama", seed=1)
    model.generation_config = GenerationConfig(do_sample=False, max_new_tokens=12, bos_token_id=1, eos_token_id=2,
                                               pad_token_id=0)
    model.save_pretrained(path)
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m hydrogen_ops.serve`` in a subprocess, stopped with SIGINT (uvicorn's clean
    shutdown)."""

    def __init__(self, model_dir, attn, log_path):
        self.port = free_port()
        self.log = open(log_path, "w")
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hydrogen_ops.serve", str(model_dir), "--attn-implementation", attn,
             "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu", "--dtype", "float32",
             "--cb-block-size", "8", "--cb-num-blocks", "256", "--cb-max-batch-tokens", "64"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout=180):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.output()}")

    def stop(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        self.log.close()
        return self.proc.returncode

    def output(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log.name) as f:
            return f.read()[-4000:]


def chat_all(url, model_dir, conversations):
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", timeout=300, max_retries=0)

    def ask(messages):
        reply = client.chat.completions.create(model=str(model_dir), messages=messages, max_tokens=12,
                                               temperature=0.0)
        return reply.choices[0].message.content

    with ThreadPoolExecutor(len(conversations)) as pool:
        return list(pool.map(ask, conversations))


def test_serve_paged_hydrogen_matches_paged_sdpa(tmp_path):
    model_dir = build_model_dir(tmp_path / "tiny")
    system = " ".join(WORDS[i % 150] for i in range(7, 7 + 40))
    conversations = [
        [{"role": "system", "content": system},
         {"role": "user", "content": " ".join(WORDS[(13 * i + j) % 150] for j in range(3 + i))}]
        for i in range(6)
    ]
    answers = {}
    for attn in ("paged|sdpa", "paged|hydrogen"):
        server = Server(model_dir, attn, tmp_path / f"{attn.replace('|', '_')}.log")
        try:
            server.wait_ready()
            answers[attn] = chat_all(server.url, model_dir, conversations)
        finally:
            rc = server.stop()
        out = server.output()
        assert rc == 0, f"{attn}: server exit code {rc}:\n{out}"
        assert "Traceback" not in out, out
        if attn == "paged|hydrogen":  # the server's exit line: shared prefixes were decoded once
            assert re.search(r"[1-9]\d* decoded shared prefixes once", out), out
    assert all(a and a.strip() for a in answers["paged|hydrogen"]), answers
    assert answers["paged|hydrogen"] == answers["paged|sdpa"]


def test_serve_usage_and_argv():
    from hydrogen_ops.serve import serve_argv

    assert serve_argv(["m"]) == ["serve", "m", "--continuous-batching", "--attn-implementation", "paged|hydrogen",
                                 "--no-cb-use-cuda-graph"]
    assert serve_argv(["m", "--attn-implementation", "paged|sdpa", "--cb-use-cuda-graph"]) == [
        "serve", "m", "--attn-implementation", "paged|sdpa", "--cb-use-cuda-graph", "--continuous-batching"]
    with pytest.raises(SystemExit, match="MODEL_DIR"):
        serve_argv([])


def test_serve_accepts_registered_paged_implementations_only():
    import hydrogen_ops.hf  # noqa: F401
    from hydrogen_ops.serve import _accept_paged_implementations

    _accept_paged_implementations()
    from transformers.cli.serving import model_manager

    model_manager.ModelManager(device="cpu", attn_implementation="paged|hydrogen").shutdown()
    with pytest.raises(ValueError, match="not a registered paged attention implementation"):
        model_manager.ModelManager(device="cpu", attn_implementation="paged|nonexistent")
    with pytest.raises(ValueError, match="Unsupported attention implementation"):
        model_manager.ModelManager(device="cpu", attn_implementation="nonexistent")
