"""The component-level computational graph of a HookedTransformer (edge attribution patching).

Sources (nodes with an output written to the residual stream): ``input`` (the embeddings,
``blocks.0.hook_resid_pre``), every head ``a{l}.h{h}`` (its result ``z_h @ W_O[h]``, i.e.
``blocks.{l}.attn.hook_result[:, :, h]``, computed from ``hook_z`` because materialising
``hook_result`` inside TransformerLens is ~4x slower) and every MLP ``m{l}``
(``blocks.{l}.hook_mlp_out``). Targets (node inputs): the q, k and v inputs
of every head (``blocks.{l}.hook_{q,k,v}_input[:, :, h]``), every MLP input (``blocks.{l}.hook_mlp_in``)
and ``logits`` (``blocks.{L-1}.hook_resid_post``). Every source feeds every later target through
the residual stream; heads of layer l feed MLP l but not each other.

Sources and targets are numbered in forward order, so target t reads exactly the sources
``0 .. n_up[t]-1``. An edge is a (source, target) pair; edges are ordered by target, then source.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import einops
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from circuitry.errors import CircuitryError

FLAGS = ("use_split_qkv_input", "use_hook_mlp_in")


@dataclass(frozen=True)
class TargetHook:
    """One hook point that carries node inputs: targets ``start .. start+count-1``, reading
    sources ``0 .. n_up-1``. ``heads``: the activation has a head axis [batch, pos, head, d_model]."""

    name: str
    start: int
    count: int
    n_up: int
    heads: bool


@dataclass(frozen=True)
class SourceHook:
    """One hook point that carries node outputs: sources ``start .. start+count-1``."""

    name: str
    start: int
    count: int
    heads: bool


def check_model(model) -> None:
    """Reject architectures whose hooks do not decompose the residual stream into node outputs."""
    cfg = model.cfg
    if cfg.n_key_value_heads is not None and cfg.n_key_value_heads != cfg.n_heads:
        raise CircuitryError(
            "grouped-query attention: circuit graphs work on the exact multi-head equivalent; convert with "
            "circuitry.circuits.as_multi_head(model) (discover and compare do this themselves)"
        )
    if getattr(cfg, "use_normalization_before_and_after", False):
        raise CircuitryError("models with a norm after attention/MLP outputs are not supported by circuit graphs")
    try:
        from transformer_lens.components.transformer_block import POST_NORM_ARCHITECTURES
    except ImportError:  # older TransformerLens
        POST_NORM_ARCHITECTURES = ()
    if cfg.original_architecture in POST_NORM_ARCHITECTURES:
        raise CircuitryError(f"post-norm architecture {cfg.original_architecture} is not supported by circuit graphs")
    if cfg.positional_embedding_type == "shortformer":
        raise CircuitryError("shortformer positional embeddings are not supported by circuit graphs")


@contextmanager
def graph_flags(model, split: bool = True) -> Iterator[None]:
    """Turn on split q/k/v inputs (if ``split``) and MLP-input hooks; restore the flags afterwards."""
    cfg = model.cfg
    saved = {f: getattr(cfg, f) for f in FLAGS}
    try:
        cfg.use_split_qkv_input = split
        cfg.use_hook_mlp_in = not cfg.attn_only
        yield
    finally:
        for f, v in saved.items():
            setattr(cfg, f, v)


class Graph:
    """Nodes, edges and per-edge scores of one model shape. Build with :meth:`from_model`."""

    def __init__(self, n_layers: int, n_heads: int, has_mlp: bool, parallel: bool = False, d_model: int = 0):
        self.n_layers, self.n_heads, self.has_mlp = n_layers, n_heads, has_mlp
        self.parallel, self.d_model = parallel, d_model
        L, H, M = n_layers, n_heads, int(has_mlp)
        self.sources: list[str] = ["input"]
        self.targets: list[str] = []
        self.source_hooks: list[SourceHook] = [SourceHook("blocks.0.hook_resid_pre", 0, 1, False)]
        self.target_hooks: list[TargetHook] = []
        n_up: list[int] = []
        for layer in range(L):
            base = len(self.sources)
            for ch in "qkv":
                hook = TargetHook(f"blocks.{layer}.hook_{ch}_input", len(self.targets), H, base, True)
                self.target_hooks.append(hook)
                self.targets += [f"a{layer}.h{h}<{ch}>" for h in range(H)]
                n_up += [base] * H
            self.sources += [f"a{layer}.h{h}" for h in range(H)]
            self.source_hooks.append(SourceHook(f"blocks.{layer}.attn.hook_z", base, H, True))
            if has_mlp:
                up = base if parallel else base + H
                self.target_hooks.append(TargetHook(f"blocks.{layer}.hook_mlp_in", len(self.targets), 1, up, False))
                self.targets.append(f"m{layer}")
                n_up.append(up)
                self.source_hooks.append(SourceHook(f"blocks.{layer}.hook_mlp_out", len(self.sources), 1, False))
                self.sources.append(f"m{layer}")
        final = TargetHook(f"blocks.{L - 1}.hook_resid_post", len(self.targets), 1, len(self.sources), False)
        self.target_hooks.append(final)
        self.targets.append("logits")
        n_up.append(len(self.sources))
        assert len(self.sources) == 1 + L * (H + M) and len(self.targets) == L * (3 * H + M) + 1
        self.n_up: Int[Tensor, " target"] = torch.tensor(n_up)
        self.valid: Bool[Tensor, "source target"] = torch.arange(len(self.sources))[:, None] < self.n_up[None, :]
        dst, src = self.valid.T.nonzero(as_tuple=True)  # ordered by target, then source
        self.edge_src: Int[Tensor, " edge"] = src
        self.edge_dst: Int[Tensor, " edge"] = dst
        self.scores: Float[Tensor, " edge"] | None = None  # set by eap_scores / exact_edge_scores
        self._names: list[str] | None = None
        self._index: dict[str, int] | None = None

    @classmethod
    def from_model(cls, model) -> "Graph":
        check_model(model)
        cfg = model.cfg
        parallel = bool(getattr(cfg, "parallel_attn_mlp", False))
        return cls(cfg.n_layers, cfg.n_heads, not cfg.attn_only, parallel, cfg.d_model)

    # ----------------------------------------------------------------- naming
    @property
    def n_edges(self) -> int:
        return len(self.edge_src)

    @property
    def nodes(self) -> list[str]:
        """All node names in forward order (sources, then ``logits``)."""
        return self.sources + ["logits"]

    @property
    def edge_names(self) -> list[str]:
        if self._names is None:
            s, t = self.edge_src.tolist(), self.edge_dst.tolist()
            self._names = [f"{self.sources[i]}->{self.targets[j]}" for i, j in zip(s, t)]
        return self._names

    def edge_index(self, name: str) -> int:
        if self._index is None:
            self._index = {n: i for i, n in enumerate(self.edge_names)}
        if name not in self._index:
            raise CircuitryError(f"no edge {name!r} in this graph (names look like 'a0.h3->a2.h1<q>', 'm0->logits')")
        return self._index[name]

    @staticmethod
    def target_node(target: str) -> str:
        """``a2.h1<q>`` -> ``a2.h1``."""
        return target.split("<", 1)[0]

    @staticmethod
    def target_channel(target: str) -> str:
        """``a2.h1<q>`` (or an edge name ending in it) -> ``q``; ``""`` for MLP and logits targets."""
        return target[-2] if target.endswith(">") else ""

    def edge_nodes(self) -> tuple[list[str], list[str]]:
        """(source node, target node) name of every edge."""
        tnodes = [self.target_node(t) for t in self.targets]
        return [self.sources[i] for i in self.edge_src.tolist()], [tnodes[j] for j in self.edge_dst.tolist()]

    def check_model(self, model) -> None:
        cfg = model.cfg
        if (cfg.n_layers, cfg.n_heads, not cfg.attn_only) != (self.n_layers, self.n_heads, self.has_mlp):
            raise CircuitryError(
                f"graph is for {self.n_layers} layers x {self.n_heads} heads (mlp={self.has_mlp}); model has "
                f"{cfg.n_layers} x {cfg.n_heads} (mlp={not cfg.attn_only})"
            )
        parallel = bool(getattr(cfg, "parallel_attn_mlp", False))
        if parallel != self.parallel:  # a parallel block's MLP does not read its own layer's heads: other edges
            raise CircuitryError(f"graph is for a model with{'' if self.parallel else 'out'} parallel attention and MLP; "
                                 f"the model has{'' if parallel else ' none'}")  # fmt: skip
        check_model(model)
        gates = getattr(model, "gates", None)
        if gates is not None and gates.mode == "train":
            raise CircuitryError(
                "the model's gates are in 'train' mode (random, so scores and faithfulness would change from run "
                "to run); circuits use deterministic gates: model.gates.set_mode('eval')"
            )

    def require_scores(self, scores: Tensor | None = None) -> Float[Tensor, " edge"]:
        """``scores`` if given, else the scores the last full scoring run stored on this graph."""
        if scores is None:
            if self.scores is None:
                raise CircuitryError(
                    "this graph has no scores yet: run eap_scores or exact_edge_scores on it, or pass scores="
                )
            scores = self.scores
        return self.check_edge_vector(scores, "scores")

    def check_edge_vector(self, values: Tensor, what: str = "edge vector") -> Tensor:
        values = torch.as_tensor(values)
        if values.shape != (self.n_edges,):
            raise CircuitryError(f"{what} has shape {tuple(values.shape)}; this graph has {self.n_edges} edges")
        return values

    def check_edge_mask(self, mask: Tensor) -> Bool[Tensor, " edge"]:
        """A boolean edge mask; 0/1 numbers are accepted, anything else (e.g. scores) is refused."""
        mask = self.check_edge_vector(mask, "edge mask")
        if mask.dtype != torch.bool and not ((mask == 0) | (mask == 1)).all():
            raise CircuitryError("edge mask must be boolean (or 0/1); got other values - scores? select a circuit first")
        return mask.bool()

    # ------------------------------------------------------------ conversions
    def to_matrix(self, values: Float[Tensor, " edge"], fill: float = 0.0) -> Float[Tensor, "source target"]:
        """Scatter per-edge values into a [source, target] matrix (``fill`` off the edges)."""
        values = self.check_edge_vector(values)
        out = torch.full(self.valid.shape, fill, dtype=values.dtype)
        out[self.edge_src, self.edge_dst] = values
        return out

    def from_matrix(self, matrix: Float[Tensor, "source target"]) -> Float[Tensor, " edge"]:
        return matrix[self.edge_src, self.edge_dst]

    def to_networkx(self, edge_mask: Bool[Tensor, " edge"] | None = None, scores: Tensor | None = None):
        """A ``networkx.MultiDiGraph`` over nodes; one edge per graph edge (key = edge name) with
        attributes ``channel`` (q/k/v or empty), ``score`` (NaN if unscored) and ``index``. ``edge_mask`` keeps a subset."""
        import networkx as nx

        scores = self.scores if scores is None else self.check_edge_vector(scores, "scores")
        scores = torch.full((self.n_edges,), float("nan")) if scores is None else scores
        keep = torch.ones(self.n_edges, dtype=torch.bool)
        if edge_mask is not None:
            keep = self.check_edge_mask(edge_mask)
        g = nx.MultiDiGraph()
        for name in self.nodes:
            kind = "input" if name == "input" else "logits" if name == "logits" else "mlp" if name[0] == "m" else "head"
            g.add_node(name, kind=kind, layer=None if kind in ("input", "logits") else int(name[1:].split(".")[0]))
        src, dst = self.edge_nodes()
        names, sc = self.edge_names, scores.tolist()
        for i in keep.nonzero().flatten().tolist():
            g.add_edge(src[i], dst[i], key=names[i], channel=self.target_channel(names[i]), score=float(sc[i]), index=i)
        if edge_mask is not None:
            g.remove_nodes_from([n for n in list(g.nodes) if g.degree(n) == 0])
        return g

    def __repr__(self) -> str:
        shape = f"{self.n_layers} layers x {self.n_heads} heads, mlp={self.has_mlp}"
        return f"Graph({shape}: {len(self.nodes)} nodes, {self.n_edges} edges)"


def source_outputs(model, h: SourceHook, x: Tensor) -> Float[Tensor, "batch pos count d_model"]:
    """The outputs of the sources of hook ``h`` from its activation ``x``: per head ``z_h @ W_O[h]`` for
    ``hook_z`` ([batch, pos, head, d_head]), else ``x`` itself with a source axis of 1."""
    if h.heads:
        w_o = model.blocks[int(h.name.split(".")[1])].attn.W_O
        return einops.einsum(x, w_o, "b p h e, h e d -> b p h d")
    return x[:, :, None]


def record_hooks(graph: Graph, buffer: Float[Tensor, "batch pos source d_model"], model):
    """Forward hooks that write every source output (detached) into ``buffer``."""

    def make(h: SourceHook):
        def hook(x: Tensor, hook) -> None:
            with torch.no_grad():
                buffer[:, : x.shape[1], h.start : h.start + h.count] = source_outputs(model, h, x)

        return hook

    return [(h.name, make(h)) for h in graph.source_hooks]


def record_sources(model, graph: Graph, tokens: Int[Tensor, "batch pos"]) -> tuple[Tensor, Tensor]:
    """(logits, source outputs [batch, pos, source, d_model]) of one plain forward pass (no grad)."""
    shape = (tokens.shape[0], tokens.shape[1], len(graph.sources), model.cfg.d_model)
    buf = torch.zeros(shape, dtype=model.cfg.dtype, device=tokens.device)
    with torch.no_grad(), model.hooks(fwd_hooks=record_hooks(graph, buf, model)):
        logits = model(tokens)
    return logits, buf
