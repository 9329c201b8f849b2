"""CLI commands for transcoders and attribution graphs: ``clt train``, ``clt eval``, ``attribute``,
``compare-graphs``. Registered on the main app by :func:`register`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from circuitry.artifacts import staged_output
from circuitry.cli_circuits import warn_pair_order
from circuitry.data import DATA_HELP
from circuitry.errors import CircuitryError, check_flags

clt_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Cross-layer transcoders.")
NODE_HELP = "Influence pruning: the share of influence on the logits the kept nodes carry (1.0 keeps every node with any)."
EDGE_HELP = "Influence pruning: the share of edge influence kept (1.0 keeps every edge with any)."


def _model_and_clt(model: str, clt: Optional[Path]):
    from circuitry.transcoders import default_clt, load_clt
    from circuitry.zoo.registry import load_model

    m = load_model(model)
    return m, (load_clt(clt, m) if clt is not None else default_clt(m))


def _quality_lines(q: dict) -> list[str]:
    return [
        "layer  explained-var  nmse     L0",
        *[f"{l:>5}  {ev:>13.4f}  {nm:.4f}  {l0:>6.2f}" for l, (ev, nm, l0) in enumerate(zip(q["explained_variance"], q["nmse"], q["l0"]))],
        f"mean explained variance {q['mean_explained_variance']:.4f}; dead features {q['dead_fraction']:.1%}",
        f"CE original {q['ce_original']:.4f}, replacement {q['ce_replacement']:.4f}, MLPs zeroed {q['ce_zero_ablation']:.4f} "
        f"-> {q['ce_recovered']:.1%} of the gap recovered ({q.get('n_sequences') or '?'} sequences, {q['n_tokens']} tokens)",
    ]


def register(app: typer.Typer, one_line_errors, emit) -> None:
    app.add_typer(clt_app, name="clt")

    @clt_app.command("train")
    @one_line_errors
    def clt_train_cmd(
        model: str = typer.Option("tiny-dense", "--model"),
        out: Path = typer.Option(..., "--out", help="Output directory (circuit-tracer layout)."),
        steps: int = typer.Option(2000, "--steps"),
        batch_size: int = typer.Option(24, "--batch-size", help="Global batch (sequences); split over torchrun processes."),
        features: int = typer.Option(512, "--features", help="Features per layer."),
        per_layer: bool = typer.Option(False, "--per-layer", help="Per-layer transcoders instead of a CLT."),
        sparsity: float = typer.Option(5e-3, "--sparsity", help="Coefficient of the tanh sparsity penalty."),
        seed: int = typer.Option(0, "--seed"),
        seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Sequence length (default: the model's context)."),
        grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per step (gradient accumulation)."),
        precision: str = typer.Option("auto", "--precision", help="auto (bf16 autocast on GPU), fp32 or bf16."),
        data: Optional[Path] = typer.Option(None, "--data", help=DATA_HELP),
        resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in --out."),
        plots: bool = typer.Option(True, "--plots/--no-plots", help="Write the training-curve and quality plots (DIR/plots/)."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Train a cross-layer transcoder on activations streamed from MODEL; writes quality into circuitry.json."""
        from circuitry.distributed import init_from_env, shutdown
        from circuitry.transcoders import CLTTrainConfig, train_and_save
        from circuitry.zoo.registry import load_model

        check_flags({"--steps": steps, "--features": features, "--batch-size": batch_size}, {"--sparsity": sparsity})
        init_from_env()  # under torchrun: join the process group (DDP); otherwise a no-op
        m = load_model(model)
        cfg = CLTTrainConfig(d_transcoder=features, cross_layer=not per_layer, steps=steps, batch_size=batch_size,
                             sparsity_coef=sparsity, seed=seed, seq_len=seq_len, grad_accum=grad_accum, precision=precision)  # fmt: skip
        command = "circuitry " + " ".join(shlex.quote(a) for a in sys.argv[1:] if a != "--resume")
        _, quality = train_and_save(m, out, cfg, resume=resume, command=command, data=data)
        shutdown()  # under torchrun: every rank leaves the process group together; otherwise a no-op
        if quality is None:  # not rank 0
            return
        q = quality.to_dict()
        if plots:
            from circuitry.plotting import clt_quality_figure, log_curves, save_figure

            save_figure(log_curves(out / "train_log.jsonl", f"Transcoder training on {model}"), out / "plots" / "training_curves")
            save_figure(clt_quality_figure(q, model), out / "plots" / "clt_quality")
        emit({"model": model, "out": str(out), **q}, as_json, _quality_lines(q))

    @clt_app.command("eval")
    @one_line_errors
    def clt_eval_cmd(
        model: str = typer.Option("tiny-dense", "--model"),
        clt: Optional[Path] = typer.Option(None, "--clt", help="Transcoder directory (default: the model's shipped one)."),
        n: int = typer.Option(256, "--n", help="Held-out sequences."),
        data: Optional[Path] = typer.Option(None, "--data", help=DATA_HELP),
        out: Optional[Path] = typer.Option(None, "--out", help="Directory for quality.json and its per-layer figure."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Explained variance, NMSE, L0, dead features and replacement-model CE on held-out text."""
        from circuitry.data import token_source
        from circuitry.transcoders import evaluate_clt

        if n <= 0:
            raise CircuitryError(f"--n must be positive, got {n}")
        m, c = _model_and_clt(model, clt)
        source = token_source(m, data)
        q = {**evaluate_clt(m, c, n, data=source, progress=None).to_dict(), "data": source.info()}
        if q["n_sequences"] < n:
            typer.echo(f"warning: the held-out part of the data gives {q['n_sequences']} sequences, fewer than --n {n}", err=True)
        if out is not None:
            from circuitry.artifacts import atomic_write_json
            from circuitry.plotting import clt_quality_figure, save_figure

            with staged_output(out) as stage:
                atomic_write_json(stage / "quality.json", {"model": model, **q})
                save_figure(clt_quality_figure(q, model), stage / "clt_quality")
        emit({"model": model, **q}, as_json, _quality_lines(q))

    @app.command("attribute")
    @one_line_errors
    def attribute_cmd(
        prompt: str = typer.Argument(..., help="The prompt (BOS is prepended)."),
        model: str = typer.Option("tiny-dense", "--model"),
        clt: Optional[Path] = typer.Option(None, "--clt", help="Transcoder directory (default: the model's shipped one)."),
        node_threshold: float = typer.Option(0.8, "--node-threshold", help=NODE_HELP),
        edge_threshold: float = typer.Option(0.98, "--edge-threshold", help=EDGE_HELP),
        attention_pruned: bool = typer.Option(False, "--attention-pruned", help="Attention figures over the pruned graph only (default: every edge)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Write graph.safetensors, circuit-tracer JSON and HTML plots."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Attribution graph of one prompt: pruned nodes/edges, scores, heads carrying attention attribution."""
        from circuitry.attribution import attribute, graph_summary

        _check_thresholds(node_threshold, edge_threshold)
        m, c = _model_and_clt(model, clt)
        graph = attribute(m, c, prompt, node_threshold, edge_threshold, attention_pruned=attention_pruned)
        summary = {"model": model, **graph_summary(graph)}
        if out is not None:
            with staged_output(out) as stage:
                _write_graph(graph, m, c, stage, out)
            summary["out"] = str(out)
        att = graph.info["attention"]
        emit(summary, as_json, [
            f"{model}: {summary['nodes']} nodes, {summary['edges']} edges after pruning ({graph.n_features} active features)",
            f"replacement score {summary['replacement_score']:.3f}, completeness {summary['completeness_score']:.3f}",
            f"attention: {att['heads_80']} heads / {att['head_key_pairs_80']} (head, key) pairs carry 80% "
            f"(of {att['heads_total']} / {att['head_key_pairs_total']} used)",
            "top logits: " + ", ".join(f"{d['text']!r} {d['prob']:.3f}" for d in summary["top_logits"]),
        ])  # fmt: skip

    @app.command("compare-graphs")
    @one_line_errors
    def compare_graphs_cmd(
        prompt: Optional[str] = typer.Option(None, "--prompt", help="One prompt."),
        task: Optional[str] = typer.Option(None, "--task", help="Or: clean prompts of a task."),
        n: int = typer.Option(20, "--n", help="Prompts from --task."),
        seed: int = typer.Option(0, "--seed"),
        dense: str = typer.Option("tiny-dense", "--dense"),
        sparse: str = typer.Option("tiny-sparse", "--sparse"),
        dense_clt: Optional[Path] = typer.Option(None, "--dense-clt", help="Transcoder of --dense (default: its shipped one)."),
        sparse_clt: Optional[Path] = typer.Option(None, "--sparse-clt", help="Transcoder of --sparse (default: its shipped one)."),
        node_threshold: float = typer.Option(0.8, "--node-threshold", help=NODE_HELP),
        edge_threshold: float = typer.Option(0.98, "--edge-threshold", help=EDGE_HELP),
        attention_pruned: bool = typer.Option(False, "--attention-pruned", help="Attention figures over the pruned graph only (default: every edge)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Write compare_graphs.json and the figure of the medians (compare_graphs.html) here."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Attribution graphs on the dense/sparse pair: medians of nodes, edges, heads and (head, key) pairs at 80%."""
        from circuitry.attribution import compare_graphs
        from circuitry.tasks import check_task_name, get_task

        if (prompt is None) == (task is None):
            raise CircuitryError("give exactly one of --prompt or --task")
        if dense == sparse:
            raise CircuitryError("--dense and --sparse name the same model")
        _check_thresholds(node_threshold, edge_threshold)
        pairs = {name: _model_and_clt(name, clt) for name, clt in ((dense, dense_clt), (sparse, sparse_clt))}
        warn_pair_order(*((name, m) for name, (m, _) in pairs.items()))
        if task is not None:
            if n <= 0:
                raise CircuitryError(f"--n must be positive, got {n}")
            check_task_name(task)
            prompts = [p.clean for p in get_task(task, pairs[dense][0]).pairs(n, seed)]
        else:
            prompts = [prompt]
        result = compare_graphs(pairs, prompts, node_threshold=node_threshold, edge_threshold=edge_threshold, attention_pruned=attention_pruned, progress=None)
        if out is not None:
            with staged_output(out) as stage:
                _write_comparison(result, stage)
        lines = [f"{'model':<14} {'nodes':>7} {'edges':>7} {'heads@80%':>10} {'(head,key)@80%':>15} {'per edge':>9} {'replacement':>12} {'completeness':>13}"]
        for name, r in result["models"].items():
            lines.append(f"{Path(name).name:<14} {r['nodes']:>7g} {r['edges']:>7g} {r['heads_80']:>10g} {r['head_key_pairs_80']:>15g} "
                         f"{r['edge_head_key_pairs_80_median']:>9g} {r['replacement_score']:>12.3f} {r['completeness_score']:>13.3f}")  # fmt: skip
        lines.append(f"medians over {len(prompts)} prompt(s) (per edge: median over a graph's cross-position edges of the "
                     f"(head, key) pairs covering 80% of that edge); dense/sparse: {result['ratios']}")  # fmt: skip
        emit(result, as_json, lines)


def _check_thresholds(node_threshold: float, edge_threshold: float) -> None:
    for name, v in (("--node-threshold", node_threshold), ("--edge-threshold", edge_threshold)):
        if not 0 < v <= 1:
            raise CircuitryError(f"{name} must be in (0, 1], got {v}")


def _write_graph(graph, model, clt, out: Path, final: Path) -> None:
    """The graph's files in ``out`` (a staging directory moved into ``final``); the circuit-tracer index upserted is
    ``final``'s, so it keeps the graphs it lists."""
    from circuitry.attribution import write_circuit_tracer_json
    from circuitry.plotting import attribution_graph_figure, head_loadings_figure, save_figure

    graph.save(out / "graph.safetensors")
    write_circuit_tracer_json(graph, out, "graph", model, clt, index_from=final)
    save_figure(attribution_graph_figure(graph, model, clt), out / "attribution_graph")
    save_figure(head_loadings_figure({model.cfg.model_name: graph}), out / "head_loadings")


def _write_comparison(result: dict, out: Path) -> None:
    from circuitry.artifacts import atomic_write_json
    from circuitry.plotting import graph_comparison_figure, save_figure

    atomic_write_json(out / "compare_graphs.json", result)
    save_figure(graph_comparison_figure(result), out / "compare_graphs")
