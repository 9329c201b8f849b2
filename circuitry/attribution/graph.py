"""Attribution graphs: exact direct effects between embeddings, CLT features, errors and logits for one prompt.

Node order (as circuit-tracer): ``[active features | errors (layer-major: layer·T + pos) | embeddings | logits]``.
``adjacency[target, source]`` is the direct effect of the source on the target at the frozen point; rows are
filled for feature and logit targets. A feature target is its pre-activation; a logit target is the logit
minus the mean logit (circuit-tracer's demeaned unembedding direction).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuitry.artifacts import check_finite, content_fingerprint, load_tensors, save_tensors
from circuitry.attribution.replacement import FrozenPoint, backward_rows, constant_injections, freeze, frozen_forward, write_points
from circuitry.errors import CircuitryError
from circuitry.progress import tqdm
from circuitry.tasks.base import check_context, prompt_tokens
from circuitry.training import gradients
from circuitry.transcoders.clt import CrossLayerTranscoder, check_has_mlps
from circuitry.transcoders.io import scan_name


@dataclass
class AttributionGraph:
    prompt: str
    tokens: list[int]
    token_strs: list[str]
    n_layers: int
    active_features: Int[Tensor, "n 3"]  # (layer, pos, feature index)
    activations: Float[Tensor, " n"]
    logit_tokens: list[int]
    logit_probs: list[float]
    adjacency: Float[Tensor, "node node"]
    info: dict[str, Any] = field(default_factory=dict)  # model/clt names and fingerprints, settings
    node_mask: Tensor | None = None  # after pruning
    edge_mask: Tensor | None = None
    cumulative_influence: Tensor | None = None
    attention: dict[str, Tensor] = field(default_factory=dict)  # see attribution.attention

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    @property
    def n_features(self) -> int:
        return len(self.active_features)

    @property
    def n_nodes(self) -> int:
        return self.n_features + self.n_layers * self.n_pos + self.n_pos + len(self.logit_tokens)

    def slices(self) -> dict[str, slice]:
        f, e, t = self.n_features, self.n_layers * self.n_pos, self.n_pos
        return {"features": slice(0, f), "errors": slice(f, f + e), "embeddings": slice(f + e, f + e + t),
                "logits": slice(f + e + t, self.n_nodes)}  # fmt: skip

    def node(self, i: int) -> dict[str, Any]:
        """Kind, layer, position (and feature / token) of node ``i``."""
        s = self.slices()
        if i < s["features"].stop:
            layer, pos, feat = self.active_features[i].tolist()
            return {"kind": "feature", "layer": layer, "pos": pos, "feature": feat, "activation": self.activations[i].item()}
        if i < s["errors"].stop:
            layer, pos = divmod(i - s["errors"].start, self.n_pos)
            return {"kind": "error", "layer": layer, "pos": pos}
        if i < s["embeddings"].stop:
            pos = i - s["embeddings"].start
            return {"kind": "embedding", "layer": -1, "pos": pos, "token": self.tokens[pos]}
        k = i - s["logits"].start
        return {"kind": "logit", "layer": self.n_layers, "pos": self.n_pos - 1, "token": self.logit_tokens[k], "prob": self.logit_probs[k]}

    def node_positions(self) -> Int[Tensor, " node"]:
        return torch.tensor([self.node(i)["pos"] for i in range(self.n_nodes)])

    def to_networkx(self, pruned: bool = True):
        """A DiGraph source → target with ``weight`` = direct effect; node attributes from :meth:`node`."""
        import networkx as nx

        g = nx.DiGraph()
        keep = self.node_mask if (pruned and self.node_mask is not None) else torch.ones(self.n_nodes, dtype=torch.bool)
        edges = self.edge_mask if (pruned and self.edge_mask is not None) else self.adjacency != 0
        for i in keep.nonzero().flatten().tolist():
            g.add_node(i, **self.node(i))
        for t, s in edges.nonzero().tolist():
            if keep[s] and keep[t]:
                g.add_edge(s, t, weight=self.adjacency[t, s].item())
        return g

    def save(self, path: str | Path) -> None:
        """One safetensors file; everything that is not a tensor goes into its JSON header."""
        tensors = {"active_features": self.active_features, "activations": self.activations, "adjacency": self.adjacency}
        for name in ("node_mask", "edge_mask", "cumulative_influence"):
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name)
        tensors.update({f"attention.{k}": v for k, v in self.attention.items()})
        meta = {"kind": "attribution-graph", "prompt": self.prompt, "tokens": self.tokens, "token_strs": self.token_strs,
                "n_layers": self.n_layers, "logit_tokens": self.logit_tokens, "logit_probs": self.logit_probs, "info": self.info}  # fmt: skip
        save_tensors(path, tensors, {**meta, "fingerprint": content_fingerprint(tensors, meta, "graph.meta")})

    @classmethod
    def load(cls, path: str | Path) -> AttributionGraph:
        tensors, meta = load_tensors(path, kind="attribution-graph")
        if "fingerprint" in meta and content_fingerprint(tensors, meta, "graph.meta") != meta["fingerprint"]:  # (older graphs have none)
            raise CircuitryError(f"{path}: attribution graph does not match its recorded fingerprint (corrupt or modified)")
        check_finite(tensors, path)
        try:
            graph = cls(meta["prompt"], meta["tokens"], meta["token_strs"], meta["n_layers"], tensors["active_features"],
                        tensors["activations"], meta["logit_tokens"], meta["logit_probs"], tensors["adjacency"], meta["info"],
                        tensors.get("node_mask"), tensors.get("edge_mask"), tensors.get("cumulative_influence"),
                        {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("attention.")})  # fmt: skip
        except KeyError as e:
            raise CircuitryError(f"{path}: attribution graph is missing {e}") from None
        if graph.adjacency.shape != (graph.n_nodes, graph.n_nodes):
            raise CircuitryError(f"{path}: adjacency shape {tuple(graph.adjacency.shape)} does not fit {graph.n_nodes} nodes")
        return graph


def salient_logits(logits: Float[Tensor, " vocab"], max_n: int = 10, desired_prob: float = 0.95) -> tuple[list[int], list[float]]:
    """Most probable next tokens until their cumulative probability reaches ``desired_prob`` (at most ``max_n``)."""
    probs = logits.softmax(-1)
    top_p, top_i = probs.topk(min(max_n, len(probs)))
    cutoff = int(torch.searchsorted(top_p.cumsum(0), torch.tensor(desired_prob))) + 1
    return top_i[:cutoff].tolist(), top_p[:cutoff].tolist()


def target_rows(model, clt: CrossLayerTranscoder, point: FrozenPoint, features: Tensor, logit_tokens: list[int]):
    """(hook, position, read vector) of every target row: feature pre-activations, then demeaned logits."""
    hooks = [f"blocks.{l}.{clt.cfg.feature_input_hook}" for l in features[:, 0].tolist()]
    pos = features[:, 1].tolist()
    vecs = [clt.raw_encoder()[features[:, 0], features[:, 2]]]
    W_U = model.W_U  # [d_model, vocab]
    vecs.append((W_U[:, logit_tokens] - W_U.mean(-1, keepdim=True)).T)
    hooks += ["unembed.hook_in"] * len(logit_tokens)
    pos += [point.n_pos - 1] * len(logit_tokens)
    return hooks, pos, torch.cat(vecs).detach()


def source_contributions(clt: CrossLayerTranscoder, point: FrozenPoint, features: Tensor, grads: dict[str, Tensor], names: list[str]) -> Tensor:
    """Direct effect of every source (features | errors | embeddings) on each gradient row: [rows, sources]."""
    G = torch.stack([grads[n] for n in names[1:]], dim=2)  # [rows, pos, layer, d]
    cols = []
    for l in range(clt.cfg.n_layers):  # feature (l, p, f) writes a_f · W_dec[l][f, j] into MLP output l + j
        n = clt.n_targets(l)
        per_feat = einops.einsum(G[:, :, l : l + n], clt.raw_decoder(l).detach(), "r p t d, f t d -> r p f")
        sel = features[:, 0] == l
        cols.append((sel, per_feat[:, features[sel, 1], features[sel, 2]] * point.acts[features[sel, 1], l, features[sel, 2]]))
    feat_cols = G.new_zeros(G.shape[0], len(features))
    for sel, c in cols:
        feat_cols[:, sel] = c
    err = einops.einsum(G, point.errors, "r p l d, p l d -> r l p").flatten(1)
    emb = einops.einsum(grads[names[0]], point.embed, "r p d, p d -> r p")
    return torch.cat([feat_cols, err, emb], dim=1)


def cap_features(clt: CrossLayerTranscoder, point: FrozenPoint, max_features: int) -> None:
    """Keep the ``max_features`` active features with the largest decoder-norm-weighted activation
    a·‖W_dec‖; the others are folded into the error nodes (which stay exact: error = MLP out − reconstruction
    from the kept features). Bounds the graph's memory (the adjacency is dense, nodes²)."""
    raw_norms = torch.stack([clt.raw_decoder(l).flatten(1).norm(dim=-1) for l in range(clt.cfg.n_layers)])
    weight = point.acts * raw_norms.detach()
    active = weight > 0
    if int(active.sum()) <= max_features:
        return
    cut = weight[active].topk(max_features).values.min()
    point.acts = torch.where(weight >= cut, point.acts, 0.0)
    point.recon = clt.decode(point.acts)


def frozen_point(graph: AttributionGraph, model, clt: CrossLayerTranscoder) -> FrozenPoint:
    """The frozen forward pass ``graph`` was built on: kept in memory by :func:`build_graph`, rebuilt from the
    prompt's tokens for a loaded graph. A model or transcoder whose fingerprint differs from the one the graph
    records, or that gives other active features or activations, is refused."""
    if getattr(graph, "point", None) is not None:
        return graph.point
    from circuitry.zoo.registry import config_fingerprint, model_fingerprint

    check_pair(model, clt)
    recorded = {"model": (graph.info.get("model_fingerprint"), model_fingerprint(model)),
                "model config": (graph.info.get("model_config_fingerprint"), config_fingerprint(model)),
                "transcoder": (graph.info.get("clt_fingerprint"), getattr(clt, "record", {}).get("fingerprint"))}  # fmt: skip
    for what, (then, now) in recorded.items():
        if then is not None and now is not None and then != now:
            raise CircuitryError(f"this attribution graph was built with another {what} (fingerprint {then}, given {now}); "
                                 "pass the pair it was built with")  # fmt: skip
    with torch.no_grad():
        point = freeze(model, clt, torch.tensor(graph.tokens))
        if graph.info.get("max_feature_nodes") is not None:
            cap_features(clt, point, graph.info["max_feature_nodes"])
    active = (point.acts > 0).nonzero()[:, [1, 0, 2]]  # (layer, pos, feature), as build_graph orders them
    active = active[torch.argsort(active[:, 0] * point.n_pos + active[:, 1], stable=True)]
    same = active.shape == graph.active_features.shape and torch.equal(active, graph.active_features)
    if same:
        acts = point.acts[active[:, 1], active[:, 0], active[:, 2]].to(graph.activations.dtype)
        same = torch.allclose(acts, graph.activations, rtol=1e-4, atol=1e-6)
    if not same:
        raise CircuitryError("this attribution graph was built with another model or transcoder (its active features differ); "
                             "pass the pair it was built with")  # fmt: skip
    graph.point = point
    return point


def check_pair(model, clt: CrossLayerTranscoder) -> None:
    """The transcoder must replace this model's MLPs: same layer count and width, and the model has MLPs."""
    check_has_mlps(model)
    if getattr(model.cfg, "use_qk_norm", False):
        raise CircuitryError("attribution graphs do not support models with QK-norm (their frozen norm scales have a head axis)")
    if (clt.cfg.n_layers, clt.cfg.d_model) != (model.cfg.n_layers, model.cfg.d_model):
        raise CircuitryError(
            f"the transcoder is for {clt.cfg.n_layers} layers of width {clt.cfg.d_model}; the model has "
            f"{model.cfg.n_layers} of width {model.cfg.d_model}"
        )
    dtype = next(clt.parameters()).dtype
    if dtype != model.cfg.dtype:
        raise CircuitryError(f"the transcoder is {dtype} and the model {model.cfg.dtype}; convert one, e.g. clt.to(model.cfg.dtype)")


@gradients("attribution")
def build_graph(
    model,
    clt: CrossLayerTranscoder,
    prompt: str | Tensor,
    max_logits: int = 10,
    desired_logit_prob: float = 0.95,
    batch_size: int = 256,
    progress: bool = False,
    max_feature_nodes: int | None = 7500,
) -> AttributionGraph:
    """The full (unpruned) attribution graph of ``prompt`` (BOS prepended as the model does), or of a 1-D
    tensor of token ids (used as given). At most ``max_feature_nodes`` features (circuit-tracer's default
    7,500); the rest are folded into the error nodes, so the graph stays exact. A [1, pos] tensor (what
    ``model.to_tokens`` returns) or a list of ids is one prompt too."""
    check_pair(model, clt)
    if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        prompt = torch.tensor(prompt, dtype=torch.long)
    if isinstance(prompt, Tensor):
        if prompt.dim() == 2 and prompt.shape[0] == 1:
            prompt = prompt[0]
        if prompt.dim() != 1 or len(prompt) == 0:
            raise CircuitryError(f"expected one prompt's token ids, shape [pos] or [1, pos]; got {tuple(prompt.shape)}")
        if prompt.is_floating_point() or prompt.is_complex() or prompt.dtype == torch.bool:
            raise CircuitryError(f"token ids must be integers, got {prompt.dtype}")
        outside = prompt[(prompt < 0) | (prompt >= model.cfg.d_vocab)]
        if len(outside):
            raise CircuitryError(f"token id {int(outside[0])} is outside the model's vocabulary (ids 0 to {model.cfg.d_vocab - 1})")
        tokens, prompt = prompt.long(), ""
        token_strs = model.to_str_tokens(tokens) if model.tokenizer is not None else [str(t) for t in tokens.tolist()]
        check_context(model, len(tokens))
    elif not isinstance(prompt, str):
        raise CircuitryError(f"a prompt is a string or token ids (a tensor or a list of ints), got {type(prompt).__name__}")
    else:
        tokens = prompt_tokens(model, prompt)[0]  # checked: not empty, known words, fits the context
        token_strs = model.to_str_tokens(tokens)
    bos = getattr(model.tokenizer, "bos_token_id", None)  # None: no tokenizer to say which id is BOS
    if bos is not None and int(tokens[0]) != bos:
        raise CircuitryError(f"the prompt's tokens do not start with BOS (id {bos}): position 0 is taken as BOS and gets no "
                             "features, so its word would be lost; prepend it (model.to_tokens does)")  # fmt: skip
    with torch.no_grad():
        point = freeze(model, clt, tokens)
        if max_feature_nodes is not None:
            cap_features(clt, point, max_feature_nodes)
    features = (point.acts > 0).nonzero()  # (pos, layer, feature)
    features = features[:, [1, 0, 2]]  # (layer, pos, feature)
    order = torch.argsort(features[:, 0] * point.n_pos + features[:, 1], stable=True)
    features = features[order]
    logit_tokens, logit_probs = salient_logits(point.logits, max_logits, desired_logit_prob)
    hooks, pos, vecs = target_rows(model, clt, point, features, logit_tokens)
    n_src = len(features) + (clt.cfg.n_layers + 1) * point.n_pos
    graph = AttributionGraph(
        prompt=prompt, tokens=tokens.tolist(), token_strs=token_strs, n_layers=model.cfg.n_layers,
        active_features=features, activations=point.acts[features[:, 1], features[:, 0], features[:, 2]],
        logit_tokens=logit_tokens, logit_probs=logit_probs, adjacency=torch.zeros(0, 0),
        info={"model": model.cfg.model_name, "max_logits": max_logits, "desired_logit_prob": desired_logit_prob,
              "max_feature_nodes": max_feature_nodes, "clt_scan": scan_name(model.cfg.model_name, clt.cfg),
              "logit_texts": [model.tokenizer.decode([int(t)]) if model.tokenizer is not None else str(int(t)) for t in logit_tokens]},
    )  # fmt: skip
    adjacency = torch.zeros(graph.n_nodes, graph.n_nodes, dtype=model.cfg.dtype)
    rows_index = torch.cat([torch.arange(len(features)), torch.arange(len(logit_tokens)) + graph.slices()["logits"].start])
    names = write_points(model)
    bar = tqdm(total=len(hooks), desc="attribution", disable=not progress)
    for rows, grads in backward_rows(model, point, hooks, pos, vecs, batch_size):
        adjacency[rows_index[rows], :n_src] = source_contributions(clt, point, features, grads, names)
        bar.update(rows.stop - rows.start)
    bar.close()
    graph.adjacency = adjacency
    graph.point = point  # kept in memory for attention splits and checks; not saved
    return graph


def target_values(model, clt: CrossLayerTranscoder, graph: AttributionGraph) -> tuple[Tensor, Tensor]:
    """(actual value, constant term) of every target row, the constant being the frozen model's output with
    every source set to zero. Exactness: actual = constant + Σ direct effects."""
    point: FrozenPoint = graph.point
    feats = graph.active_features
    hooks, pos, vecs = target_rows(model, clt, point, feats, graph.logit_tokens)
    actual = torch.cat([point.pre[feats[:, 1], feats[:, 0], feats[:, 2]],
                        point.logits[graph.logit_tokens] - point.logits.mean()])  # fmt: skip
    with torch.no_grad():
        acts = frozen_forward(model, point, constant_injections(point, clt.b_dec.detach()), capture=tuple(set(hooks)))
        const = torch.stack([acts[h][0, p] @ v for h, p, v in zip(hooks, pos, vecs)])
    const[: len(feats)] += clt.b_enc[feats[:, 0], feats[:, 2]].detach()
    b_U = model.b_U.detach()
    const[len(feats) :] += b_U[graph.logit_tokens] - b_U.mean()
    return actual, const
