"""Small random-weight architectures shared by the tests (GPT-2-style, attention-only, rotary, GQA)."""

BASE = dict(n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=64, d_vocab=50, n_ctx=16, act_fn="gelu",
            normalization_type="LN", positional_embedding_type="standard", attn_only=False, default_prepend_bos=True,
            n_key_value_heads=None, rotary_dim=None, gated_mlp=False, original_architecture=None)  # fmt: skip
ARCHS = {
    "gpt2-style": {},
    "attn-only": {"attn_only": True, "d_mlp": None},
    "rotary": {"positional_embedding_type": "rotary", "rotary_dim": 8, "normalization_type": "RMS", "gated_mlp": True, "act_fn": "silu"},
    "grouped-query": {"n_key_value_heads": 2, "positional_embedding_type": "rotary", "rotary_dim": 8},
}
