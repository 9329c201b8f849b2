"""The ``circuitry`` command line: a thin layer over the library."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import typer

from circuitry.artifacts import check_out_dir, staged_output
from circuitry.data import DATA_HELP
from circuitry.errors import CircuitryError, check_flags
from circuitry.zoo.language import SHIPPED_IOI_SHARE
from circuitry.zoo.pretrain import PretrainConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Sparse attention and circuit discovery.")
zoo_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Build the shipped models.")
app.add_typer(zoo_app, name="zoo")


def one_line_errors(fn: Callable) -> Callable:
    """Turn a :class:`CircuitryError` (bad input or file) or an OS error (a file that cannot be read or written)
    into ``error: ...`` on stderr and exit 1. An ``out`` option that is a file is refused before any work, and
    after a run that wrote it, stderr says where the files are (stdout stays the table or the JSON)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            if kwargs.get("out") is not None:
                if _empty_out(sys.argv[1:]):  # typer has already turned "" into Path("."), the current directory
                    raise CircuitryError("--out is an empty name; give a directory (--out . for the current one)")
                check_out_dir(kwargs["out"])
            with warnings.catch_warnings():  # a library warning is one 'warning: ...' line, not Python's two
                warnings.showwarning = lambda message, *_, **__: typer.echo(f"warning: {message}", err=True)
                result = fn(*args, **kwargs)
            if kwargs.get("out") is not None and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone writes
                typer.echo(f"outputs in {kwargs['out']}", err=True)
            return result
        except (CircuitryError, OSError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _empty_out(argv: list[str]) -> bool:
    """Whether the command line gives ``--out ""`` (or ``--out=``)."""
    return "--out=" in argv or any(a == "--out" and b == "" for a, b in zip(argv, argv[1:]))


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
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for eval.json (with the metric per prompt) and its histogram."),
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
    result = evaluate_task(m, get_task(task, m, corruption), n=n, seed=seed)
    result.model = model
    score = {**result.to_dict(), "seconds": round(time.time() - t0, 2)}
    if out is not None:
        from circuitry.artifacts import atomic_write_json
        from circuitry.plotting import save_figure, task_metric_figure

        with staged_output(out) as stage:
            atomic_write_json(stage / "eval.json", {**result.to_dict(values=True), "seconds": score["seconds"]})
            save_figure(task_metric_figure(result), stage / "metric_per_prompt")
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
    fixed_bias: bool = typer.Option(False, "--fixed-bias", help="Keep the per-head gate biases at their initial value (default: learned)."),
    renormalise: bool = typer.Option(False, "--renormalise", help="Rescale each gated attention row to sum 1 (the paper does not)."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name in meta.json (default: the --out folder's name)."),
    data: Optional[Path] = typer.Option(None, "--data", help=DATA_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in --out."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write training-curve and connectivity plots."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Sparse attention post-training: minimise connectivity subject to CE <= target."""
    from circuitry.data import TextData
    from circuitry.distributed import init_from_env, shutdown
    from circuitry.sparsity import SparsifyConfig, sparsify
    from circuitry.zoo.registry import load_model

    check_flags({"--steps": steps, "--batch-size": batch_size, "--lr": lr, "--qk-lr": qk_lr, "--bias-lr": bias_lr},
                  {"--tolerance": tolerance})
    init_from_env()  # under torchrun: join the process group (DDP); otherwise a no-op
    dense = load_model(model)
    if getattr(dense, "gates", None) is not None:
        raise CircuitryError(f"model {model!r} already has gates; start from a dense model")
    cfg = SparsifyConfig(steps=steps, tolerance=tolerance, batch_size=batch_size, lr=lr, qk_lr=qk_lr, bias_lr=bias_lr, seed=seed,
                         seq_len=seq_len, grad_accum=grad_accum, precision=precision, activation_checkpointing=activation_checkpointing,
                         lora_rank=lora_rank, lora_alpha=lora_alpha, learn_bias=not fixed_bias, renormalise=renormalise)  # fmt: skip
    source = None if data is None else TextData.load(data, dense)  # read and tokenized once, for training and the plots
    # its warnings (CE above target) print as one line each through one_line_errors
    sparse, meta = sparsify(dense, out, cfg, resume=resume, name=name or out.name, parent=model, data=source)
    shutdown()  # under torchrun: every rank leaves the process group together; otherwise a no-op
    if meta is None:  # not rank 0 of a torchrun job
        return
    if plots:
        from circuitry.plotting import head_connectivity, save_figure, training_curves
        from circuitry.sparsity import connectivity_report

        save_figure(training_curves(out / "sparsify_log.jsonl"), out / "plots" / "training_curves")
        report = connectivity_report(sparse, n=cfg.heldout_sequences, data=source, seq_len=seq_len)  # meta.json's sequences
        save_figure(head_connectivity(report), out / "plots" / "head_connectivity")
    _emit(meta, as_json, [
        f"connectivity {meta['connectivity']:.4f} (floor {meta['floor']:.4f}, "
        f"{meta['connectivity'] / meta['floor']:.2f}x), keys/query {meta['keys_per_query']:.2f}, "
        f"held-out CE {meta['heldout_ce']:.4f} vs dense {meta['dense_heldout_ce']:.4f}, {meta['train_seconds']:.0f} s",
    ])  # fmt: skip


@app.command("connectivity")
@one_line_errors
def connectivity_cmd(
    model: str = typer.Option("tiny-sparse", "--model"),
    task: Optional[str] = typer.Option(None, "--task", help="Measure on this task's clean prompts instead of held-out text."),
    n: int = typer.Option(1024, "--n", help="Held-out sequences (or task prompts)."),
    seed: int = typer.Option(1, "--seed", help="Seed of the --task prompts (held-out text is fixed)."),
    data: Optional[Path] = typer.Option(None, "--data", help=DATA_HELP),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Held-out sequence length (default: the model's context; "
                                          "a model post-trained with --seq-len records its figures at that length)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for the per-head plot (head_connectivity_<model>.html)."),
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
    report = connectivity_report(m, get_task(task, m) if task else None, n=n, seed=seed, data=data, seq_len=seq_len, progress=None)
    result = {**report.to_dict(), "model": model, "task": task}  # data: the held-out text's source and fingerprint
    if out is not None:
        from circuitry.plotting import head_connectivity, save_figure

        with staged_output(out) as stage:
            save_figure(head_connectivity(report), stage / f"head_connectivity_{Path(model).name}")
    ce = f", held-out CE {report.ce:.4f}" if report.ce is not None else ""
    where = task or f"held-out {data or 'text'}"
    _emit(result, as_json, [
        f"{model} on {where} (n={report.n_sequences}, mean length {report.seq_len:.1f}): connectivity {report.connectivity:.4f}, "
        f"floor {report.floor:.4f} ({report.connectivity / report.floor:.2f}x), keys/query {report.keys_per_query:.2f}{ce}",
        "  per layer: " + ", ".join(f"L{i} {c:.4f}" for i, c in enumerate(report.per_layer)),
        f"  (query, head) pairs keeping no key: {report.no_key:.1%}; per layer "
        + ", ".join(f"L{i} {c:.1%}" for i, c in enumerate(report.no_key_per_layer)),
    ])  # fmt: skip


@zoo_app.command("build")
@one_line_errors
def zoo_build_cmd(
    out: Path = typer.Option(Path("runs/tiny-dense"), "--out", help="Output model directory."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name in meta.json (default: the --out folder's name)."),
    steps: int = typer.Option(PretrainConfig.steps, "--steps"),
    seed: int = typer.Option(PretrainConfig.seed, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in --out."),
    n_layers: int = typer.Option(PretrainConfig.n_layers, "--n-layers"),
    n_heads: int = typer.Option(PretrainConfig.n_heads, "--n-heads"),
    d_model: int = typer.Option(PretrainConfig.d_model, "--d-model"),
    d_mlp: int = typer.Option(PretrainConfig.d_mlp, "--d-mlp"),
    ioi_subject_rate: float = typer.Option(PretrainConfig.ioi_subject_rate, "--ioi-subject-rate", help="Share of IOI sentences ending with the subject (0: the shipped language)."),
    ioi_share: float = typer.Option(PretrainConfig.ioi_share, "--ioi-share", help=f"Share of IOI sentences in the language ({SHIPPED_IOI_SHARE}: the shipped language)."),
    dropout: float = typer.Option(PretrainConfig.dropout, "--dropout", help="GPT-2-style training dropout (embeddings, attention, block outputs)."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write the training-curve plot (DIR/plots/)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Pretrain a dense model on the synthetic language (default: tiny-dense's architecture; checkpoints, --resume)."""
    from circuitry.zoo.pretrain import pretrain
    from circuitry.zoo.registry import read_json

    cfg = PretrainConfig(n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_mlp=d_mlp, steps=steps, seed=seed,
                         ioi_subject_rate=ioi_subject_rate, ioi_share=ioi_share, dropout=dropout)  # fmt: skip
    pretrain(cfg, out, resume=resume, name=name or out.name)
    meta = read_json(out / "meta.json")
    if plots:
        from circuitry.plotting import log_curves, save_figure

        save_figure(log_curves(out / "train_log.jsonl", f"Pretraining {meta['name']}"), out / "plots" / "training_curves")
    _emit(meta, as_json, [f"held-out CE {meta['heldout_ce']:.4f} in {meta['train_seconds']:.0f} s"])


from circuitry.cli_circuits import register as _register_circuit_commands  # noqa: E402
from circuitry.cli_graphs import register as _register_graph_commands  # noqa: E402

_register_circuit_commands(app, one_line_errors, _emit)
_register_graph_commands(app, one_line_errors, _emit)


def main() -> None:
    """Entry point: usage errors (a bad option value, a missing option: exit 2) and input errors (exit 1) print one
    line; typer's own error panel would take six."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except CircuitryError as e:  # pragma: no cover - commands convert these below
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    except Exception as e:
        # typer (0.29 vendors click as typer._click and exports only BadParameter) raises its usage errors here;
        # they are recognised by click's exception interface
        if not all(hasattr(e, a) for a in ("format_message", "show", "exit_code")):
            raise
        if type(e).__name__ == "NoArgsIsHelpError":  # a bare command group: its help, as typer shows it
            e.show()
            sys.exit(e.exit_code)
        where = e.ctx.command_path if getattr(e, "ctx", None) else "circuitry"
        typer.echo(f"error: {' '.join(e.format_message().split())} (see '{where} --help')", err=True)
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
