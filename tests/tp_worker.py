"""Worker for tests/test_tensor_parallel.py: greedy tokens of a saved tiny model, with
``hydrogen_ops.hf.generate`` (attn "hydrogen") and ``generate_batch`` (attn "paged|hydrogen").

    torchrun --nproc-per-node 2 tests/tp_worker.py MODEL_DIR OUT_JSON   (tp_plan="auto", gloo)
    python tests/tp_worker.py MODEL_DIR OUT_JSON                          (one process)

Rank 0 (or the single process) writes the tokens to OUT_JSON.
"""

from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def prompts():
    from hf_models import random_ids

    system, docs = random_ids(21, 0), [random_ids(11, 1), random_ids(9, 2)]
    return system, [docs[i % 2] + random_ids(2 + i, 10 + i) for i in range(4)]


def main(model_dir, out_path):
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    import hydrogen_ops
    import hydrogen_ops.hf as hf

    transformers.logging.set_verbosity_error()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        torch.distributed.init_process_group("gloo")
        model = AutoModelForCausalLM.from_pretrained(model_dir, tp_plan="auto", attn_implementation="hydrogen")
        weight = model.model.layers[0].self_attn.q_proj.weight
        local_rows = weight.to_local().shape[0] if hasattr(weight, "to_local") else weight.shape[0]
        assert local_rows == weight.shape[0] // world, f"q_proj is not sharded: {local_rows} of {weight.shape[0]} rows"
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="hydrogen")
    model.eval()
    query_heads = set()  # heads the hydrogen ops see: the local ones under tensor parallel
    hydragen = hydrogen_ops.hydragen_attention

    def recording_hydragen(q, *args, **kwargs):
        query_heads.add(q.shape[1])
        return hydragen(q, *args, **kwargs)

    hydrogen_ops.hydragen_attention = recording_hydragen
    system, suffixes = prompts()
    new = 8
    with torch.no_grad():
        out = hf.generate(model, system, suffixes, max_new_tokens=new, do_sample=False, pad_token_id=0, eos_token_id=None)
        generate_tokens = out[:, -new:].tolist()
        model.set_attn_implementation("paged|hydrogen")
        gen = GenerationConfig(max_new_tokens=new, do_sample=False, eos_token_id=-1, pad_token_id=0)
        cbc = ContinuousBatchingConfig(block_size=8, num_blocks=64, max_batch_tokens=32)
        results = model.generate_batch([system + s for s in suffixes], generation_config=gen, continuous_batching_config=cbc)
    batch_tokens = {rid: list(r.generated_tokens) for rid, r in sorted(results.items())}
    from hydrogen_ops.hf.paged import STATS

    if int(os.environ.get("RANK", "0")) == 0:
        with open(out_path, "w") as f:
            json.dump({"generate": generate_tokens, "generate_batch": batch_tokens, "world": world,
                       "shared_steps": STATS["decode_steps_with_shared_prefix"],
                       "query_heads": sorted(query_heads)}, f)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
