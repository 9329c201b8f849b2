"""Small random-weight architectures shared by the tests (GPT-2-style, attention-only, rotary, GQA), a random
task batch for them and a logit-difference metric."""

import torch

from circuitry.tasks.base import TaskBatch, answer_metric


BASE = dict(n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=64, d_vocab=50, n_ctx=16, act_fn="gelu",
            normalization_type="LN", positional_embedding_type="standard", attn_only=False, default_prepend_bos=True,
            n_key_value_heads=None, rotary_dim=None, gated_mlp=False, original_architecture=None)  # fmt: skip
ARCHS = {
    "gpt2-style": {},
    "attn-only": {"attn_only": True, "d_mlp": None},
    "rotary": {"positional_embedding_type": "rotary", "rotary_dim": 8, "normalization_type": "RMS", "gated_mlp": True, "act_fn": "silu"},
    "grouped-query": {"n_key_value_heads": 2, "positional_embedding_type": "rotary", "rotary_dim": 8},
}
GRAPH_ARCHS = {k: v for k, v in ARCHS.items() if k != "grouped-query"}  # circuit graphs reject GQA
FLAGS = ("use_attn_result", "use_split_qkv_input", "use_hook_mlp_in")  # TransformerLens flags circuit code toggles


def logit_diff(logits, batch):
    last = logits[torch.arange(logits.shape[0]), batch.answer_pos]
    return answer_metric(last, batch.correct, batch.wrong, "logit_diff")


def random_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return TaskBatch(
        clean=torch.randint(0, 50, (4, 10), generator=g), corrupt=torch.randint(0, 50, (4, 10), generator=g),
        answer_pos=torch.tensor([9, 7, 8, 9]), correct=torch.tensor([[1], [2], [3], [4]]),
        wrong=torch.tensor([[5], [6], [7], [8]]),
    )  # fmt: skip
