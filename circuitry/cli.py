"""The ``circuitry`` command line: a thin layer over the library."""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import typer

from circuitry.errors import CircuitryError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Sparse attention and circuit discovery.")
zoo_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Build the shipped models.")
app.add_typer(zoo_app, name="zoo")


def one_line_errors(fn: Callable) -> Callable:
    """Turn a :class:`CircuitryError` (bad input or file) into ``error: ...`` on stderr and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CircuitryError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _emit(obj: dict, as_json: bool, lines: list[str]) -> None:
    if as_json:
        typer.echo(json.dumps(obj))
    else:
        typer.echo("\n".join(lines))


@app.command("models")
@one_line_errors
def models_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the zoo models (available offline)."""
    from circuitry.zoo.registry import list_models

    models = list_models()
    lines = [f"{m['name']:<14} {m.get('kind', ''):<7} held-out CE {m.get('heldout_ce', float('nan')):.4f}  {m['path']}" for m in models]
    lines.append("Also: any circuitry model directory, or a TransformerLens model name (needs the model hub).")
    _emit({"models": models}, as_json, lines)


@app.command("eval")
@one_line_errors
def eval_cmd(
    task: str = typer.Option(..., "--task", help="ioi, greater-than, induction, sva, docstring, or a .json/.jsonl file."),
    model: str = typer.Option("tiny-dense", "--model", help="Zoo name, model directory or TransformerLens name."),
    n: int = typer.Option(500, "--n", help="Number of prompts."),
    seed: int = typer.Option(1, "--seed", help="Prompt seed."),
    corruption: Optional[str] = typer.Option(None, "--corruption", help="Corruption (task default if omitted)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Accuracy (correct beats wrong) and mean metric of a model on fresh task prompts."""
    from circuitry.tasks import check_task_name, get_task
    from circuitry.tasks.evaluate import evaluate_task
    from circuitry.zoo.registry import load_model

    if n <= 0:
        raise CircuitryError(f"--n must be positive, got {n}")
    check_task_name(task)
    t0 = time.time()
    m = load_model(model)
    score = evaluate_task(m, get_task(task, m, corruption), n=n, seed=seed).to_dict()
    score["model"], score["seconds"] = model, round(time.time() - t0, 2)
    dropped = {k: v for k, v in score["filtered"].items() if v}
    _emit(score, as_json, [
        f"task {score['task']} ({score['metric']}, corruption {score['corruption']}) on {model}, n={score['n']}, seed={seed}",
        f"  accuracy     {score['accuracy']:.4f}   mean metric {score['mean_metric']:.4f}",
        f"  corrupted:   accuracy {score['accuracy_corrupt']:.4f}   mean metric {score['mean_metric_corrupt']:.4f}",
        *([f"  dropped (not single tokens): {dropped}"] if dropped else []),
    ])  # fmt: skip


@app.command("sparsify")
@one_line_errors
def sparsify_cmd(
    out: Path = typer.Option(..., "--out", help="Output model directory (checkpoints live here too)."),
    model: str = typer.Option("tiny-dense", "--model", help="Dense model to post-train."),
    steps: int = typer.Option(3500, "--steps"),
    tolerance: float = typer.Option(0.0, "--tolerance", help="CE target = dense held-out CE x (1 + tolerance)."),
    batch_size: int = typer.Option(32, "--batch-size"),
    lr: float = typer.Option(1e-4, "--lr", help="Learning rate of the model weights."),
    qk_lr: float = typer.Option(1e-4, "--qk-lr", help="Learning rate of the query/key weights."),
    bias_lr: float = typer.Option(2e-2, "--bias-lr", help="Learning rate of the per-head gate biases."),
    seed: int = typer.Option(0, "--seed"),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Sequence length (default: the model's context)."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per step (gradient accumulation)."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 autocast on GPU), fp32 or bf16."),
    activation_checkpointing: bool = typer.Option(False, "--activation-checkpointing", help="Recompute block activations in the backward pass."),
    lora_rank: int = typer.Option(0, "--lora-rank", help="0: train all weights; r > 0: rank-r LoRA on attention and MLP weights."),
    lora_alpha: Optional[float] = typer.Option(None, "--lora-alpha", help="LoRA scale alpha / r (default alpha = r)."),
    name: str = typer.Option("tiny-sparse", "--name"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in --out."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write training-curve and connectivity plots."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Sparse attention post-training: minimise connectivity subject to CE <= target."""
    from circuitry.distributed import init_from_env
    from circuitry.sparsity import SparsifyConfig, sparsify
    from circuitry.zoo.registry import load_model

    if steps <= 0 or batch_size <= 0 or min(lr, qk_lr, bias_lr) <= 0 or tolerance < 0:
        raise CircuitryError("--steps, --batch-size and the learning rates must be positive and --tolerance >= 0")
    init_from_env()  # under torchrun: join the process group (DDP); otherwise a no-op
    dense = load_model(model)
    if getattr(dense, "gates", None) is not None:
        raise CircuitryError(f"model {model!r} already has gates; start from a dense model")
    cfg = SparsifyConfig(steps=steps, tolerance=tolerance, batch_size=batch_size, lr=lr, qk_lr=qk_lr, bias_lr=bias_lr, seed=seed,
                         seq_len=seq_len, grad_accum=grad_accum, precision=precision, activation_checkpointing=activation_checkpointing,
                         lora_rank=lora_rank, lora_alpha=lora_alpha)  # fmt: skip
    sparse, meta = sparsify(dense, out, cfg, resume=resume, name=name, parent=model)
    if meta is None:  # not rank 0 of a torchrun job
        return
    if plots:
        from circuitry.plotting import head_connectivity, save_figure, training_curves
        from circuitry.sparsity import connectivity_report

        save_figure(training_curves(out / "sparsify_log.jsonl"), out / "plots" / "training_curves")
        save_figure(head_connectivity(connectivity_report(sparse)), out / "plots" / "head_connectivity")
    _emit(meta, as_json, [
        f"wrote {out}: connectivity {meta['connectivity']:.4f} (floor {meta['floor']:.4f}, "
        f"{meta['connectivity'] / meta['floor']:.2f}x), keys/query {meta['keys_per_query']:.2f}, "
        f"held-out CE {meta['heldout_ce']:.4f} vs dense {meta['dense_heldout_ce']:.4f}, {meta['train_seconds']:.0f} s",
    ])  # fmt: skip


@app.command("connectivity")
@one_line_errors
def connectivity_cmd(
    model: str = typer.Option("tiny-sparse", "--model"),
    task: Optional[str] = typer.Option(None, "--task", help="Measure on this task's clean prompts instead of held-out text."),
    n: int = typer.Option(1024, "--n", help="Held-out sequences (or task prompts)."),
    seed: int = typer.Option(1, "--seed"),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for the per-head plot (and a patterns plot)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Share of causal attention edges kept, keys per query and the 1-key floor."""
    from circuitry.sparsity import connectivity_report
    from circuitry.tasks import check_task_name, get_task
    from circuitry.zoo.registry import load_model

    if n <= 0:
        raise CircuitryError(f"--n must be positive, got {n}")
    if task is not None:
        check_task_name(task)
    m = load_model(model)
    report = connectivity_report(m, get_task(task, m) if task else None, n=n, seed=seed)
    result = {**report.to_dict(), "model": model, "task": task}
    if out is not None:
        from circuitry.plotting import head_connectivity, save_figure

        save_figure(head_connectivity(report), Path(out) / f"head_connectivity_{Path(model).name}")
    ce = f", held-out CE {report.ce:.4f}" if report.ce is not None else ""
    _emit(result, as_json, [
        f"{model} on {task or 'held-out text'} (n={n}, mean length {report.seq_len:.1f}): connectivity {report.connectivity:.4f}, "
        f"floor {report.floor:.4f} ({report.connectivity / report.floor:.2f}x), keys/query {report.keys_per_query:.2f}{ce}",
        "  per layer: " + ", ".join(f"L{i} {c:.4f}" for i, c in enumerate(report.per_layer)),
    ])  # fmt: skip


def _discover_models(task: str, models: list[str], method: str, n_prompts: int, corruption: Optional[str], seed: int, out: Optional[Path],
                     ablation: str = "corrupt", selection: str = "abs", ig_steps: int = 5):  # fmt: skip
    from circuitry.circuits import METHODS, discover
    from circuitry.circuits.patching import check_ablation
    from circuitry.circuits.selection import CURVE_SELECTIONS
    from circuitry.tasks import check_task_name, get_task
    from circuitry.zoo.registry import load_model

    if method not in METHODS:
        raise CircuitryError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if n_prompts <= 0:
        raise CircuitryError(f"--n-prompts must be positive, got {n_prompts}")
    if ig_steps < 1:
        raise CircuitryError(f"--ig-steps must be positive, got {ig_steps}")
    if selection not in CURVE_SELECTIONS:
        raise CircuitryError(f"unknown selection {selection!r}; choose from {', '.join(CURVE_SELECTIONS)}")
    check_ablation(ablation)
    check_task_name(task)
    results = {}
    for name in models:
        model = load_model(name)
        model.cfg.model_name = name
        t = get_task(task, model, corruption)
        results[name] = discover(model, t, method, n_prompts, seed, ablation=ablation, ig_steps=ig_steps, selection=selection)
    if out is not None:
        _write_discovery(results, Path(out))
    return results


def _write_discovery(results: dict, out: Path) -> None:
    from circuitry.artifacts import atomic_write_json
    from circuitry.plotting import circuit_graph, faithfulness_curves, head_importance, save_figure

    save_figure(faithfulness_curves(results), out / "faithfulness_curves")
    for name, r in results.items():
        stem = Path(name).name
        circuit = r.circuit(0.9)
        atomic_write_json(out / f"circuit_{stem}.json", {**r.to_dict(), "circuit_at_0.9": circuit.to_dict() if circuit else None})
        save_figure(head_importance(r.graph, r.scores), out / f"head_importance_{stem}")
        if circuit is not None:
            save_figure(circuit_graph(circuit), out / f"circuit_{stem}")


def _discovery_report(task: str, method: str, results: dict, pair: tuple[str, str] | None, as_json: bool) -> None:
    from circuitry.circuits import compare

    first = next(iter(results.values()))
    obj = {"task": task, "method": method, "ablation": first.ablation, "selection": first.selection,
           "models": {n: r.to_dict() for n, r in results.items()}}  # fmt: skip
    lines = [f"{'model':<14} {'edges@0.9':>10} {'heads@0.9':>10} {'edges@0.8':>10} {'heads@0.8':>10} {'m(full)':>9} {'m(empty)':>9} {'CPR':>6} {'seconds':>8}"]
    for n, r in results.items():
        d = r.to_dict()
        lines.append(f"{Path(n).name:<14} {str(d['edges_at_0.9']):>10} {str(d['heads_at_0.9']):>10} {str(d['edges_at_0.8']):>10} "
                     f"{str(d['heads_at_0.8']):>10} {d['m_full']:>9.3f} {d['m_empty']:>9.3f} {d['cpr']:>6.3f} {d['seconds']:>8.1f}")  # fmt: skip
    lines.append(f"(of {r.graph.n_edges} edges; {r.n_prompts} prompts to score, {r.n_prompts} fresh ones to evaluate; "
                 f"{r.ablation} ablation, {r.selection} selection)")  # fmt: skip
    if pair is not None:
        ratios = compare(results, *pair)
        obj.update(ratios)
        lines.append(f"dense/sparse at f>=0.9: edges x{ratios['edge_ratio_at_0.9']}, heads x{ratios['head_ratio_at_0.9']}; "
                     f"at f>=0.8: edges x{ratios['edge_ratio_at_0.8']}, heads x{ratios['head_ratio_at_0.8']}")  # fmt: skip
    _emit(obj, as_json, lines)


_METHOD_OPT = typer.Option("eap-local", "--method", help="eap-local (default), eap, eap-ig, eap-ig-node or exact.")
_ABLATION_OPT = typer.Option("corrupt", "--ablation", help="What edges outside the circuit carry: corrupt, mean or zero.")
_SELECTION_OPT = typer.Option("abs", "--selection", help="Edges kept per budget: abs (top by |score|), signed or greedy.")
_IG_STEPS_OPT = typer.Option(5, "--ig-steps", help="Integration steps for eap-ig and eap-ig-node.")


@app.command("discover")
@one_line_errors
def discover_cmd(
    task: str = typer.Option("ioi", "--task", help="Built-in task or a .json/.jsonl file."),
    model: Optional[str] = typer.Option(None, "--model", help="One model; default: tiny-sparse and its dense parent."),
    method: str = _METHOD_OPT,
    n_prompts: int = typer.Option(100, "--n-prompts"),
    corruption: Optional[str] = typer.Option(None, "--corruption"),
    seed: int = typer.Option(0, "--seed"),
    ablation: str = _ABLATION_OPT,
    selection: str = _SELECTION_OPT,
    ig_steps: int = _IG_STEPS_OPT,
    out: Optional[Path] = typer.Option(None, "--out", help="Write circuit JSON and HTML plots here."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Circuit discovery with faithfulness by patched forwards; dense vs sparse side by side by default."""
    models = [model] if model else ["tiny-dense", "tiny-sparse"]
    results = _discover_models(task, models, method, n_prompts, corruption, seed, out, ablation, selection, ig_steps)
    _discovery_report(task, method, results, None if model else ("tiny-dense", "tiny-sparse"), as_json)


@app.command("compare")
@one_line_errors
def compare_cmd(
    task: str = typer.Option(..., "--task"),
    dense: str = typer.Option("tiny-dense", "--dense"),
    sparse: str = typer.Option("tiny-sparse", "--sparse"),
    method: str = _METHOD_OPT,
    n_prompts: int = typer.Option(100, "--n-prompts"),
    corruption: Optional[str] = typer.Option(None, "--corruption"),
    seed: int = typer.Option(0, "--seed"),
    ablation: str = _ABLATION_OPT,
    selection: str = _SELECTION_OPT,
    ig_steps: int = _IG_STEPS_OPT,
    out: Optional[Path] = typer.Option(None, "--out"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Edges and heads a circuit needs on a dense and a sparse model, and their ratio."""
    if dense == sparse:
        raise CircuitryError("--dense and --sparse name the same model")
    results = _discover_models(task, [dense, sparse], method, n_prompts, corruption, seed, out, ablation, selection, ig_steps)
    _discovery_report(task, method, results, (dense, sparse), as_json)


@zoo_app.command("build")
@one_line_errors
def zoo_build_cmd(
    out: Path = typer.Option(Path("runs/tiny-dense"), "--out", help="Output model directory."),
    name: str = typer.Option("tiny-dense", "--name"),
    steps: int = typer.Option(2500, "--steps"),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in --out."),
    n_layers: int = typer.Option(4, "--n-layers"),
    n_heads: int = typer.Option(8, "--n-heads"),
    d_model: int = typer.Option(128, "--d-model"),
    d_mlp: int = typer.Option(512, "--d-mlp"),
    ioi_subject_rate: float = typer.Option(0.0, "--ioi-subject-rate", help="Share of IOI sentences ending with the subject (0: the shipped language)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Pretrain a dense model on the synthetic language (default: tiny-dense's architecture; checkpoints, --resume)."""
    from circuitry.zoo.pretrain import PretrainConfig, pretrain
    from circuitry.zoo.registry import read_json

    cfg = PretrainConfig(n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_mlp=d_mlp, steps=steps, seed=seed,
                         ioi_subject_rate=ioi_subject_rate)  # fmt: skip
    pretrain(cfg, out, resume=resume, name=name)
    meta = read_json(out / "meta.json")
    _emit(meta, as_json, [f"wrote {out}: held-out CE {meta['heldout_ce']:.4f} in {meta['train_seconds']:.0f} s"])


from circuitry.cli_graphs import register as _register_graph_commands  # noqa: E402

_register_graph_commands(app, one_line_errors, _emit)


def main() -> None:
    """Entry point: usage errors come from typer (exit 2); input errors print one line (exit 1)."""
    try:
        app(standalone_mode=True)
    except CircuitryError as e:  # pragma: no cover - commands convert these below
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
