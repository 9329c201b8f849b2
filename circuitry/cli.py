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


@zoo_app.command("build")
@one_line_errors
def zoo_build_cmd(
    out: Path = typer.Option(Path("runs/tiny-dense"), "--out", help="Output model directory."),
    name: str = typer.Option("tiny-dense", "--name"),
    steps: int = typer.Option(2500, "--steps"),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in --out."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Pretrain the default dense model on the synthetic language (checkpoints, --resume)."""
    from circuitry.zoo.pretrain import PretrainConfig, pretrain
    from circuitry.zoo.registry import read_json

    if steps <= 0:
        raise CircuitryError(f"--steps must be positive, got {steps}")
    pretrain(PretrainConfig(steps=steps, seed=seed), out, resume=resume, name=name)
    meta = read_json(out / "meta.json")
    _emit(meta, as_json, [f"wrote {out}: held-out CE {meta['heldout_ce']:.4f} in {meta['train_seconds']:.0f} s"])


def main() -> None:
    """Entry point: usage errors come from typer (exit 2); input errors print one line (exit 1)."""
    try:
        app(standalone_mode=True)
    except CircuitryError as e:  # pragma: no cover - commands convert these below
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
