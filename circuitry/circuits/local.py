"""EAP with exact local responses ("eap-local"): the AtP* QK fix (Kramár et al. 2024), extended to every target.

EAP linearises the whole model at the clean run: score(u -> v) = Δa_u · ∂m/∂x_v, with Δa_u = a_u(ablated) − a_u(clean).
Where the target node itself is strongly nonlinear in its input - a softmax that saturates or, in a gated model,
a hard attention gate that switches - that first-order term misses most of the effect. Here the target's own
response to the single-edge change is computed exactly, and only what lies downstream of the target is linearised:

- q / k input of head h:  Δpattern_h = pattern_h(ln1(x + Δa_u)) − pattern_h(ln1(x)), recomputed through the
  model's own rotary, scaling, causal mask, softmax and hook points (so attention gates apply), then
  score = Σ Δpattern_h · ∂m/∂pattern_h (the AtP* QK fix);
- v input of head h:      Δz_h = pattern_h · (v_h(ln1(x + Δa_u)) − v_h(ln1(x))),  score = Σ Δz_h · ∂m/∂z_h;
- MLP input:              Δout = mlp(ln2(x + Δa_u)) − mlp(ln2(x)),  score = Σ Δout · ∂m/∂mlp_out;
- logits:                 score = m(unembed(ln_final(x + Δa_u))) − m(clean): exact single-edge patching.

Cost per batch: the corrupted and clean forwards, one backward, and per layer one batched recomputation of
ln1 / q, k, v / patterns / MLP for every upstream source (chunked so memory stays bounded by the batch).
"""

from __future__ import annotations

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from circuitry.circuits.graph import Graph, graph_flags, record_hooks
from circuitry.circuits.patching import Ablation, MeanSources, Metric, ablated_sources, position_mask, repeat_batch
from circuitry.errors import CircuitryError
from circuitry.tasks.base import TaskBatch

# attention variants whose pattern this module recomputes exactly; others are refused, not approximated
_UNSUPPORTED = {
    "use_qk_norm": "QK-norm",
    "use_attention_sinks": "attention sinks",
    "use_logn_attn": "log-n attention scaling",
    "clip_qkv": "q/k/v clipping",
}


def check_local_support(model) -> None:
    cfg = model.cfg
    if cfg.positional_embedding_type not in ("standard", "rotary"):
        raise CircuitryError(f"eap-local recomputes attention patterns and does not support "
                             f"{cfg.positional_embedding_type} position embeddings; use method eap or eap-ig")  # fmt: skip
    for flag, name in _UNSUPPORTED.items():
        if getattr(cfg, flag, None):
            raise CircuitryError(f"eap-local does not support {name}; use method eap or eap-ig")
    if getattr(cfg, "original_architecture", None) in ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM"):
        raise CircuitryError("eap-local does not support OLMo QK-norm; use method eap or eap-ig")


def _pattern(attn, q: Float[Tensor, "n pos head d_head"], k: Float[Tensor, "n pos head d_head"]) -> Float[Tensor, "n head q k"]:
    """The (gated) attention pattern exactly as AbstractAttention.forward computes it, through the model's own
    ``hook_attn_scores`` / ``hook_pattern`` so permanent hooks (attention gates) apply."""
    if attn.cfg.positional_embedding_type == "rotary":
        q, k = attn.apply_rotary(q, 0, None), attn.apply_rotary(k, 0, None)
    scores = attn.hook_attn_scores(attn.apply_causal_mask(attn.calculate_attention_scores(q, k), 0, None))
    # TransformerLens zeroes NaN rows (every key masked); softmax gives no infinities, so nan_to_num does the same
    return attn.hook_pattern(F.softmax(scores, dim=-1).nan_to_num_(nan=0.0))


def _project(attn, normed: Float[Tensor, "... d_model"], ch: str) -> Float[Tensor, "... head d_head"]:
    w, b = getattr(attn, f"W_{ch.upper()}"), getattr(attn, f"b_{ch.upper()}")
    return einops.einsum(normed, w, "... d, h d e -> ... h e") + b


def _clean_run(model, graph: Graph, batch: TaskBatch, metric_fn: Metric, record: Tensor):
    """Clean forward + one backward: residual inputs, patterns and the gradients at patterns, z and MLP outputs;
    the same forward writes every source output into ``record`` [batch, pos, source, d_model]."""
    L = graph.n_layers
    keep = [f"blocks.{l}.{n}" for l in range(L) for n in ("hook_resid_pre", "hook_mlp_in", "attn.hook_pattern", "attn.hook_z", "hook_mlp_out")]
    keep = [n for n in keep if graph.has_mlp or "mlp" not in n] + [f"blocks.{L - 1}.hook_resid_post"]
    acts: dict[str, Tensor] = {}

    def store(x: Tensor, hook) -> None:
        acts[hook.name] = x

    root = ("blocks.0.hook_resid_pre", lambda x, hook: x.detach().requires_grad_(True))
    hooks = [root] + [(n, store) for n in keep] + record_hooks(graph, record, model)
    with torch.enable_grad(), graph_flags(model, split=False), model.hooks(fwd_hooks=hooks):
        logits = model(batch.clean.to(model.cfg.device))
        m_clean = metric_fn(logits, batch)
        wrt = [n for n in keep if n.endswith(("hook_pattern", "hook_z", "hook_mlp_out"))]
        grads = torch.autograd.grad(m_clean.sum(), [acts[n] for n in wrt], allow_unused=True)
    grads = {n: torch.zeros_like(acts[n]) if g is None else g for n, g in zip(wrt, grads)}
    return {n: a.detach() for n, a in acts.items()}, grads, m_clean.detach()


def local_batch_scores(
    model, graph: Graph, batch: TaskBatch, metric_fn: Metric, ablation: Ablation | MeanSources, max_elements: int = 2**24
) -> Float[Tensor, "source target"]:
    """Sum over the batch's prompts of the per-edge estimates, as a [source, target] matrix.
    (Call through ``eap_scores(method="eap-local")``, which checks the architecture once.)"""
    b = len(batch)
    clean = torch.zeros(b, batch.clean.shape[1], len(graph.sources), model.cfg.d_model, dtype=model.cfg.dtype, device=model.cfg.device)
    acts, grads, m_clean = _clean_run(model, graph, batch, metric_fn, clean)
    diff = (ablated_sources(model, graph, batch, ablation) - clean) * position_mask(batch).to(clean)[:, :, None, None]
    diff = einops.rearrange(diff, "b p s d -> s b p d")
    out = torch.zeros(graph.valid.shape, dtype=torch.float64)
    t_len, cfg = batch.clean.shape[1], model.cfg
    # sources per chunk so that the largest recomputed tensor (patterns, MLP hidden, logits) stays under max_elements
    width = {"attn": max(cfg.n_heads * t_len, cfg.d_model), "mlp": max(cfg.d_mlp or 0, cfg.d_model), "logits": cfg.d_vocab}
    with torch.no_grad():
        for th in graph.target_hooks:
            if th.name.endswith(("k_input", "v_input")):
                continue  # done with the q input of the same layer: all three read one moved ln1 input
            layer = int(th.name.split(".")[1])
            cols = slice(th.start, th.start + th.count * (3 if th.heads else 1))
            kind = "attn" if th.heads else "mlp" if th.name.endswith("hook_mlp_in") else "logits"
            step = max(1, max_elements // (b * t_len * width[kind]))
            for s0 in range(0, th.n_up, step):
                d = diff[s0 : min(th.n_up, s0 + step)]
                if kind == "attn":
                    s = _attention_effects(model.blocks[layer], acts, grads, f"blocks.{layer}.", d)
                elif kind == "mlp":
                    s = _mlp_effects(model.blocks[layer], acts[th.name], grads[f"blocks.{layer}.hook_mlp_out"], d)
                else:  # the logits: exact
                    final = getattr(model, "ln_final", None) or torch.nn.Identity()  # absent without norms
                    logits = model.unembed(final((acts[th.name] + d).flatten(0, 1)))
                    m = metric_fn(logits, repeat_batch(batch, len(d))).view(len(d), b)
                    s = (m - m_clean[None]).sum(1)[:, None]
                out[s0 : s0 + len(d), cols] += s.double().cpu()
    return out


def _attention_effects(blk, acts: dict, grads: dict, pre: str, d: Float[Tensor, "s batch pos d_model"]) -> Float[Tensor, "s three_heads"]:
    """Effects of moving the q, k or v input of each head by ``d[s]``: columns [q heads, k heads, v heads]."""
    n, b = d.shape[:2]
    attn, x = blk.attn, acts[pre + "hook_resid_pre"]
    normed, moved = blk.ln1(x), blk.ln1(x + d)  # [batch, pos, d], [s, batch, pos, d]
    clean = {ch: _project(attn, normed, ch) for ch in "qkv"}
    pattern0, grad_pattern = acts[pre + "attn.hook_pattern"], grads[pre + "attn.hook_pattern"]
    recomputed = _pattern(attn, clean["q"], clean["k"])  # the baseline through the same code path as the moved ones
    cols = []
    for ch in "qk":
        new = _project(attn, moved, ch).flatten(0, 1)  # [s*b, pos, head, e]
        fixed = clean["k" if ch == "q" else "q"].repeat(n, 1, 1, 1)
        pattern = _pattern(attn, *((new, fixed) if ch == "q" else (fixed, new))).view(n, b, *pattern0.shape[1:])
        cols.append(einops.einsum(pattern - recomputed[None], grad_pattern, "s b h q k, b h q k -> s h"))
    dz = einops.einsum(pattern0, _project(attn, moved, "v") - clean["v"], "b h q k, s b k h e -> s b q h e")
    cols.append(einops.einsum(dz, grads[pre + "attn.hook_z"], "s b q h e, b q h e -> s h"))
    return torch.cat(cols, dim=1)


def _mlp_effects(blk, x: Float[Tensor, "batch pos d_model"], grad_out: Tensor, d: Float[Tensor, "s batch pos d_model"]) -> Float[Tensor, "s 1"]:
    """Effects of moving the MLP input by ``d[s]``, computed only where ``d`` is non-zero (elsewhere the MLP
    output does not move): padding, and on a sparse-attention model most (source, position) pairs."""
    s_idx, b_idx, p_idx = (d != 0).any(-1).nonzero(as_tuple=True)
    clean = blk.mlp(blk.ln2(x))  # TransformerLens MLPs take [batch, pos, d]
    moved = blk.mlp(blk.ln2((x[b_idx, p_idx] + d[s_idx, b_idx, p_idx])[None]))[0]
    rows = einops.einsum(moved - clean[b_idx, p_idx], grad_out[b_idx, p_idx], "n d, n d -> n")
    return torch.zeros(len(d), dtype=rows.dtype, device=rows.device).index_add_(0, s_idx, rows)[:, None]
