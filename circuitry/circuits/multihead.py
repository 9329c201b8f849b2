"""Grouped-query models as their exact multi-head equivalent, for circuit graphs.

In grouped-query attention (Llama 2/3, Mistral) each key/value head serves ``n_heads / n_key_value_heads``
query heads; TransformerLens keeps ``_W_K``/``_W_V`` per key/value head and repeats them when it computes the
pattern. Repeating the weights once, up front, gives a multi-head model with identical outputs in which every
query head has its own key and value input, so the component graph (and its edge count) is the multi-head one:
an edge into ``a3.h5<k>`` is the key input that head 5 reads. Patching it leaves the other heads of the group
reading their clean keys - a finer intervention than the shared key/value head allows, and the one every head's
own computation defines. Costs one copy of the model (its key/value weights ``n_heads / n_kv`` times larger).
"""

from __future__ import annotations

import copy

import einops
import torch

KV = ("_W_K", "_b_K", "_W_V", "_b_V")


def is_grouped_query(model) -> bool:
    n_kv = getattr(model.cfg, "n_key_value_heads", None)
    return n_kv is not None and n_kv != model.cfg.n_heads


def as_multi_head(model):
    """``model`` unchanged if it is multi-head; otherwise a new HookedTransformer with n_key_value_heads = None,
    key/value weights repeated per query head, the same tokenizer, gates (bias and mode) and name."""
    if not is_grouped_query(model):
        return model
    from transformer_lens import HookedTransformer

    from circuitry.sparsity.gates import AttentionGates, attach_gates

    cfg = copy.deepcopy(model.cfg)
    repeat = cfg.n_heads // cfg.n_key_value_heads
    cfg.n_key_value_heads = None
    with torch.random.fork_rng():  # the throwaway initialisation must not move the caller's RNG
        mha = HookedTransformer(cfg, tokenizer=model.tokenizer, move_to_device=False)
    state = {}
    for name, value in model.state_dict().items():
        if name.startswith("gates."):
            continue
        stem, leaf = name.rsplit(".", 1)
        if leaf in KV:  # [kv_head, ...] -> [head, ...], head h reading kv head h // repeat (TransformerLens' order)
            value = einops.repeat(value, "g ... -> (g r) ...", r=repeat)
            name = f"{stem}.{leaf[1:]}"
        state[name] = value
    missing, unexpected = mha.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith((".mask", ".IGNORE")) for k in missing), (missing, unexpected)
    mha.to(next(model.parameters()).device, print_details=False)  # TransformerLens prints "Moving model to device" otherwise
    gates = getattr(model, "gates", None)
    if gates is not None:
        copy_ = AttentionGates(cfg.n_layers, cfg.n_heads, renormalise=gates.renormalise)
        copy_.bias.data.copy_(gates.bias.detach())
        attach_gates(mha, mode=gates.mode, gates=copy_)
    mha.train(model.training)
    mha.circuitry_info = getattr(model, "circuitry_info", None)
    return mha
