"""CLI commands for circuit discovery: ``discover``, ``compare`` and ``circuit-eval``. Registered on the main app by
:func:`register`.

With ``--repeats R`` both run on the prompt seeds ``seed .. seed + R - 1`` (each scores on one prompt set and
evaluates on a fresh one) and report every seed's counts plus the median dense/sparse ratios: the crossing of a
faithfulness curve moves with the prompts, so one seed's ratio is a noisy figure. Consecutive seeds share a prompt
set (seed s evaluates on the prompts seed s + 1 scores on), so the R runs are not independent samples; for disjoint
runs, call it with every other seed.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import typer

from circuitry.artifacts import staged_output
from circuitry.errors import CircuitryError

_METHOD_OPT = typer.Option("eap-local", "--method", help="eap-local (default), eap, eap-ig, eap-ig-node or exact.")
_ABLATION_OPT = typer.Option("corrupt", "--ablation", help="What edges outside the circuit carry: corrupt, mean or zero.")
_SELECTION_OPT = typer.Option("abs", "--selection", help="Edges kept per budget: abs (top by |score|), signed or greedy.")
_IG_STEPS_OPT = typer.Option(5, "--ig-steps", help="Integration steps for eap-ig and eap-ig-node.")
_REPEATS_OPT = typer.Option(1, "--repeats", help="Run on seeds seed..seed+R-1; report each and the median ratios.")


def _check_options(task: str, method: str, n_prompts: int, ablation: str, selection: str, ig_steps: int, repeats: int) -> None:
    """Every option checked before a model is loaded, so bad input costs nothing and writes nothing."""
    from circuitry.circuits import METHODS
    from circuitry.circuits.patching import check_ablation
    from circuitry.circuits.selection import check_selection
    from circuitry.tasks import check_task_name

    if method not in METHODS:
        raise CircuitryError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    for flag, value in (("--n-prompts", n_prompts), ("--ig-steps", ig_steps), ("--repeats", repeats)):
        if value <= 0:
            raise CircuitryError(f"{flag} must be positive, got {value}")
    check_selection(selection)
    check_ablation(ablation)
    check_task_name(task)


def warn_pair_order(dense: tuple[str, object], sparse: tuple[str, object]) -> None:
    """A 'warning:' line when the (name, model) pair given as (dense, sparse) looks swapped or unrelated: the gates
    say otherwise, or the sparse model records another parent."""
    (d_name, d_model), (s_name, s_model) = dense, sparse
    gated = [hasattr(d_model, "gates"), hasattr(s_model, "gates")]
    if gated != [False, True]:
        has = ["" if g else "no " for g in gated]
        typer.echo(f"warning: {d_name} has {has[0]}attention gates and {s_name} has {has[1]}attention gates; "
                   "is this the (dense, sparse) order?", err=True)  # fmt: skip
    parent = getattr(s_model, "circuitry_info", {}).get("parent")
    if parent is not None and Path(parent).name != Path(d_name).name:
        typer.echo(f"warning: {s_name} was post-trained from {parent}, not from {d_name}", err=True)


def _discover_models(task: str, models: list[str], seeds: list[int], corruption: Optional[str], out: Optional[Path], *, method: str,
                     n_prompts: int, ablation: str, selection: str, ig_steps: int) -> list[dict]:  # fmt: skip
    """One ``{model name: Discovery}`` per seed; each model is loaded once, all before any discovery runs (a bad
    second name fails at once). For a (dense, sparse) pair, warns when the gates say the roles are swapped."""
    from circuitry.circuits.discover import _discover
    from circuitry.tasks import get_task
    from circuitry.zoo.registry import load_model, model_fingerprint

    loaded = []
    for name in models:
        model = load_model(name)
        model.cfg.model_name = name
        loaded.append((name, model, get_task(task, model, corruption)))
    if len(loaded) == 2:
        warn_pair_order(*((name, model) for name, model, _ in loaded))
    runs: list[dict] = [{} for _ in seeds]
    for name, model, t in loaded:
        fingerprint = model_fingerprint(model)  # once per model: the weights do not change between seeds
        for run, seed in zip(runs, seeds):
            with warnings.catch_warnings(record=True) as caught:  # shown as one 'warning:' line each, not Python's two
                warnings.simplefilter("always")
                run[name] = _discover(model, t, fingerprint, method, n_prompts, seed, ablation=ablation, ig_steps=ig_steps,
                                      selection=selection, progress=None)  # fmt: skip
            for w in caught:
                typer.echo(f"warning: {name}, seed {seed}: {w.message}", err=True)
    if out is not None:
        with staged_output(out) as stage:
            for run, seed in zip(runs, seeds):
                _write_discovery(run, stage if len(seeds) == 1 else stage / f"seed_{seed}")
    return runs


def _write_discovery(results: dict, out: Path) -> None:
    from circuitry.plotting import circuit_graph, faithfulness_curves, head_importance, save_figure

    save_figure(faithfulness_curves(results), out / "faithfulness_curves")
    for name, r in results.items():
        stem = Path(name).name
        circuit = r.circuit(0.9)
        r.save(out / f"circuit_{stem}.json")
        title = f"{stem}, {r.task} ({r.method}, circuit at f >= 0.9)"
        save_figure(head_importance(r.graph, r.scores, circuit, title), out / f"head_importance_{stem}")
        if circuit is not None:
            save_figure(circuit_graph(circuit, title=title), out / f"circuit_{stem}")


def _run_report(results: dict, pair: tuple[str, str] | None) -> tuple[dict, list[str], list[str]]:
    """JSON object, table lines and (with a pair) the ratio line of one seed's run."""
    from circuitry.circuits import compare

    first = next(iter(results.values()))
    obj = {"seed": first.seed, "models": {n: r.to_dict() for n, r in results.items()}}
    lines = [f"{'model':<14} {'edges@0.9':>10} {'heads@0.9':>10} {'edges@0.8':>10} {'heads@0.8':>10} {'m(full)':>9} {'m(empty)':>9} {'CPR':>6} {'seconds':>8}"]
    for n, d in obj["models"].items():
        lines.append(f"{Path(n).name:<14} {str(d['edges_at_0.9']):>10} {str(d['heads_at_0.9']):>10} {str(d['edges_at_0.8']):>10} "
                     f"{str(d['heads_at_0.8']):>10} {d['m_full']:>9.3f} {d['m_empty']:>9.3f} {d['cpr']:>6.3f} {d['seconds']:>8.1f}")  # fmt: skip
    ratio_line = []
    if pair is not None:
        ratios = compare(results, *pair)
        obj.update(ratios)
        ratio_line.append(f"dense/sparse at f>=0.9: edges x{ratios['edge_ratio_at_0.9']}, heads x{ratios['head_ratio_at_0.9']}; "
                     f"at f>=0.8: edges x{ratios['edge_ratio_at_0.8']}, heads x{ratios['head_ratio_at_0.8']}; "
                     f"the f>=0.9 circuits share {ratios['shared_edges_at_0.9']} edges and {ratios['shared_heads_at_0.9']} heads")  # fmt: skip
    return obj, lines, ratio_line


def _discovery_report(task: str, method: str, runs: list[dict], pair: tuple[str, str] | None, as_json: bool, emit) -> None:
    """One seed: the table and ``{"task", "method", "models", ratios}``. Several: each seed's table, then the
    median ratios; JSON keeps the first seed's ``models`` at the top level, gives the median ratios there (as printed) and
    adds ``per_seed`` and ``median`` (with the undefined counts)."""
    from circuitry.circuits import median_ratios
    from circuitry.circuits.discover import RATIO_KEYS

    reports = [_run_report(run, pair) for run in runs]
    r = next(iter(runs[0].values()))
    obj = {"task": task, "method": method, "ablation": r.ablation, "selection": r.selection, **reports[0][0]}
    footer = (f"(of {r.graph.n_edges} edges; {r.n_prompts} prompts to score, {r.curve.n_prompts} from the next seed to evaluate; "
              f"{r.ablation} ablation, {r.selection} selection)")  # fmt: skip
    if len(runs) == 1:
        lines = reports[0][1] + [footer] + reports[0][2]
    else:
        lines = [line for o, table, ratio in reports for line in [f"seed {o['seed']}:", *table, *ratio]] + [footer]
        obj["per_seed"] = [o for o, _, _ in reports]
        if pair is not None:
            obj["median"] = median_ratios(obj["per_seed"])
            obj.update({k: obj["median"][k] for k in RATIO_KEYS})  # the headline ratios are the medians, as printed
            m = obj["median"]
            lines.append(f"median over {len(runs)} seeds, dense/sparse at f>=0.9: edges x{m['edge_ratio_at_0.9']}, "
                         f"heads x{m['head_ratio_at_0.9']}; at f>=0.8: edges x{m['edge_ratio_at_0.8']}, heads x{m['head_ratio_at_0.8']}")  # fmt: skip
    emit(obj, as_json, lines)


def register(app: typer.Typer, one_line_errors, emit) -> None:
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
        repeats: int = _REPEATS_OPT,
        out: Optional[Path] = typer.Option(None, "--out", help="Write circuit JSON and HTML plots here."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Circuit discovery with faithfulness by patched forwards; dense vs sparse side by side by default."""
        _check_options(task, method, n_prompts, ablation, selection, ig_steps, repeats)
        if model is not None and not model.strip():
            raise CircuitryError("--model is an empty name")
        models = [model] if model else ["tiny-dense", "tiny-sparse"]
        runs = _discover_models(task, models, list(range(seed, seed + repeats)), corruption, out, method=method,
                                n_prompts=n_prompts, ablation=ablation, selection=selection, ig_steps=ig_steps)  # fmt: skip
        _discovery_report(task, method, runs, None if model else ("tiny-dense", "tiny-sparse"), as_json, emit)

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
        repeats: int = _REPEATS_OPT,
        out: Optional[Path] = typer.Option(None, "--out"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Edges and heads a circuit needs on a dense and a sparse model, and their ratio."""
        if dense == sparse:
            raise CircuitryError("--dense and --sparse name the same model")
        _check_options(task, method, n_prompts, ablation, selection, ig_steps, repeats)
        runs = _discover_models(task, [dense, sparse], list(range(seed, seed + repeats)), corruption, out, method=method,
                                n_prompts=n_prompts, ablation=ablation, selection=selection, ig_steps=ig_steps)  # fmt: skip
        _discovery_report(task, method, runs, (dense, sparse), as_json, emit)

    @app.command("circuit-eval")
    @one_line_errors
    def circuit_eval_cmd(
        circuit: Path = typer.Argument(..., help="A circuit JSON written by discover / compare --out (circuit_<model>.json)."),
        model: Optional[str] = typer.Option(None, "--model", help="Model to test it on (default: the one it was found on)."),
        task: Optional[str] = typer.Option(None, "--task", help="Task (default: the one it was found for)."),
        corruption: Optional[str] = typer.Option(None, "--corruption", help="Corruption (default: the one it was found with)."),
        ablation: Optional[str] = typer.Option(None, "--ablation", help="corrupt, mean or zero (default: the one it was found with)."),
        n_prompts: int = typer.Option(100, "--n-prompts"),
        target: float = typer.Option(0.9, "--target", help="Which saved circuit: the one found at f >= TARGET."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Prompt seed (default: the discovery's seed + 2, prompts it has not seen)."),
        allow_other_model: bool = typer.Option(False, "--allow-other-model", help="Apply a circuit found on other weights."),
        out: Optional[Path] = typer.Option(None, "--out", help="Directory for circuit_eval.json and the circuit's figure."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Faithfulness of a saved circuit on fresh prompts, on its own model or another one (e.g. its sparse version)."""
        from circuitry.artifacts import read_json, reading
        from circuitry.circuits import as_multi_head, faithfulness, load_circuit
        from circuitry.circuits.discover import count_shared
        from circuitry.circuits.patching import check_ablation
        from circuitry.tasks import TASKS, check_task_name, get_task
        from circuitry.zoo.registry import load_model

        if n_prompts <= 0:
            raise CircuitryError(f"--n-prompts must be positive, got {n_prompts}")
        record = read_json(circuit)
        with reading(circuit):
            if not isinstance(record, dict) or not any(str(k).startswith("circuit_at_") for k in record):
                raise CircuitryError(f"{circuit} is not a circuit file (written by discover / compare --out)")
            model = record["model"] if model is None else model
            own_task = record.get("task_file") or record["task"]  # a custom task by its file
            task = own_task if task is None else task
            corruption = (record.get("corruption") if task == own_task else None) if corruption is None else corruption
            ablation = record.get("ablation", "corrupt") if ablation is None else ablation
            seed = record.get("seed", 0) + 2 if seed is None else seed
        check_ablation(ablation)
        if task == own_task and not record.get("task_file") and task not in TASKS:
            raise CircuitryError(f"{circuit} was found on task {task!r}, built in Python (no task file recorded); "
                                 "write its records to a .jsonl file and pass --task FILE")  # fmt: skip
        check_task_name(task)
        given = load_model(model)
        c = load_circuit(circuit, given, target=target, allow_other_model=allow_other_model)  # its fingerprint: the model as given
        m = as_multi_head(given)  # grouped-query models: the multi-head equivalent the circuit's graph is of
        t = get_task(task, m, corruption)
        result = faithfulness(m, t, c.graph, c, ablation, n=n_prompts, seed=seed)
        pairs = t.pairs(n_prompts, seed)
        n_prompts = len(pairs)  # a task file may hold fewer
        own_file = record.get("task_file")  # a custom task is the same task only as the same file, whatever its name
        same = task == own_task or (own_file is not None and Path(task).is_file() and str(Path(task).resolve()) == own_file)
        if same and t.corruption == record.get("corruption"):  # prompts the discovery used
            found, used = record.get("seed", 0), record.get("n_prompts", 0)
            shared = count_shared(pairs, t.pairs(used, found), t.pairs(used, found + 1)) if used else 0  # scored, evaluated
            if shared:
                typer.echo(f"warning: {shared} of the {n_prompts} prompts were also used to find this circuit (task {t.name!r} "
                           "draws from a small set of prompts), so f is partly in-sample", err=True)  # fmt: skip
        obj = {"circuit": str(circuit), "found_on": record.get("model"), "model": model, "task": t.name, "corruption": t.corruption,
               "ablation": ablation, "n_prompts": n_prompts, "seed": seed, "f": round(result.f, 5), "m_circuit": round(result.m_circuit, 5),
               "m_full": round(result.m_full, 5), "m_empty": round(result.m_empty, 5), "edges": c.n_edges, "heads": c.n_heads, "mlps": c.n_mlps}  # fmt: skip
        if out is not None:
            from circuitry.artifacts import atomic_write_json
            from circuitry.plotting import circuit_graph, save_figure

            with staged_output(out) as stage:
                atomic_write_json(stage / "circuit_eval.json", obj)
                save_figure(circuit_graph(c, title=f"{Path(circuit).name} on {model}, f = {result.f:.3f}"), stage / "circuit")
        emit(obj, as_json, [
            f"circuit {circuit} (found on {record.get('model')}) on {model}, {t.name} ({t.corruption}, ablation {ablation}), "
            f"{n_prompts} prompts, seed {seed}",
            f"  {c.n_edges} edges, {c.n_heads} heads, {c.n_mlps} MLPs: f = {result.f:.4f} "
            f"(m circuit {result.m_circuit:.3f}, full {result.m_full:.3f}, empty {result.m_empty:.3f})",
        ])  # fmt: skip
