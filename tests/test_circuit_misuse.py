"""What a notebook user gets wrong with the circuit API, refused in one line or reported: unscored graphs,
stochastic gates, batch-mean metrics, scores as masks, mismatched lengths, in-sample faithfulness prompts."""

import json

import pytest
import torch

from circuitry import get_task
from circuitry.circuits import Graph, discover, eap_scores, exact_edge_scores, faithfulness, faithfulness_curve, select_circuit
from circuitry.circuits import patching
from circuitry.errors import CircuitryError
from circuitry.zoo.registry import build_model

from random_models import BASE, logit_diff, random_batch


def test_library_misuse_is_refused_or_reported():
    """What a notebook user gets wrong: unscored graphs, exact scores then selection, stochastic gates, a mean
    metric, scores passed as a mask, clean/corrupt of different lengths, and a faithfulness set that overlaps the
    scored prompts."""
    from circuitry.sparsity import attach_gates

    model = build_model(BASE, seed=5)
    graph, batch = Graph.from_model(model), random_batch(1)
    with pytest.raises(CircuitryError, match="no scores yet"):
        select_circuit(graph, n=5)
    with pytest.raises(CircuitryError, match="no scores yet"):
        faithfulness_curve(model, batch, graph, metric=logit_diff, grid=[1, 5])
    assert graph.to_networkx().number_of_edges() == graph.n_edges  # unscored: score NaN, still converts
    exact = exact_edge_scores(model, batch, graph, metric=logit_diff)  # stored like eap_scores' ...
    assert torch.equal(graph.scores, exact) and select_circuit(graph, n=5, pruned=False).n_edges == 5  # ... used by default
    part = exact_edge_scores(model, batch, graph, metric=logit_diff, edges=[0, 1])
    assert part.isnan().sum() == graph.n_edges - 2 and torch.equal(graph.scores, exact)  # a subset is not stored
    with pytest.raises(CircuitryError, match="one value per prompt"):
        eap_scores(model, batch, graph, metric=lambda logits, b: logit_diff(logits, b).mean())
    with pytest.raises(CircuitryError, match="one value per prompt"):
        exact_edge_scores(model, batch, graph, metric=lambda logits, b: logit_diff(logits, b).mean())
    with pytest.raises(CircuitryError, match="boolean"):
        faithfulness(model, batch, graph, exact, metric=logit_diff)
    ones = torch.ones(graph.n_edges)  # 0/1 floats are a mask
    assert faithfulness(model, batch, graph, ones, metric=logit_diff).f == pytest.approx(1, abs=1e-5)
    with pytest.raises(CircuitryError, match="same token length"):  # refused where the batch is built
        patching.TaskBatch(batch.clean, batch.corrupt[:, :-1], batch.answer_pos.clamp(max=8), batch.correct, batch.wrong)
    attach_gates(model, bias_init=0.0, mode="train")
    with pytest.raises(CircuitryError, match="'train' mode"):
        eap_scores(model, batch, graph, metric=logit_diff)
    model.gates.set_mode("eval")
    assert torch.isfinite(eap_scores(model, batch, graph, metric=logit_diff)).all()


def test_discover_counts_faithfulness_prompts_that_were_also_scored(dense, tmp_path):
    """A task file with 6 records: scoring (seed 0) and faithfulness (seed 1) draw the same 6 prompts; discover
    says so (count + warning) instead of presenting f as measured on fresh prompts. Built-in IOI: none shared."""
    rows = [{"clean": p.clean, "corrupt": p.corrupt, "answer": p.answers[0], "wrong": p.wrongs[0]}
            for p in get_task("ioi", dense).pairs(6, 0)]
    path = tmp_path / "small.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.warns(UserWarning, match="also scored on"):
        d = discover(dense, str(path), n_prompts=100, grid_points=4)
    assert d.eval_prompts_scored == d.n_prompts == 6 and d.to_dict()["eval_prompts_scored"] == 6
    assert discover(dense, "ioi", n_prompts=20, grid_points=4).eval_prompts_scored == 0  # a task name works too


def test_discover_warns_when_the_model_does_not_do_the_task():
    """Answer and wrong answer swapped: the clean run scores below the corrupted one, so f has no meaning; discover
    says so (the swapped task is a file a user could write)."""
    from circuitry import load_model
    from circuitry.tasks import CustomTask

    model = load_model("tiny-dense")
    pairs = get_task("ioi", model).pairs(8, 0)
    swapped = [{"clean": p.clean, "corrupt": p.corrupt, "answer": p.wrongs[0], "wrong": p.answers[0]} for p in pairs]
    with pytest.warns(UserWarning, match="is not above m\\(empty\\).*does not do task 'swapped'"):
        found = discover(model, CustomTask.from_records(swapped, model, name="swapped"), "eap", n_prompts=8)
    assert found.curve.m_full < found.curve.m_empty


def test_discover_warns_when_clean_and_corrupt_barely_differ():
    """A corruption that hardly moves the metric (here "a" -> "the" before the object) leaves f a ratio of two small
    differences: discover says so."""
    from circuitry import load_model
    from circuitry.tasks import CustomTask

    model = load_model("tiny-dense")
    records = [{"clean": p.clean, "corrupt": p.clean.replace(" a ", " the ", 1), "answer": p.answers[0], "wrong": p.wrongs[0]}
               for p in get_task("ioi", model).pairs(8, 0)]  # fmt: skip
    with pytest.warns(UserWarning, match=r"is barely above m\(empty\) .* \(less than 10% apart\)"):
        found = discover(model, CustomTask.from_records(records, model, name="near"), "eap", n_prompts=8)
    assert 0 < found.curve.m_full - found.curve.m_empty < 0.1 * found.curve.m_full


def test_exact_is_a_discover_method_and_eap_scores_points_to_it():
    from circuitry import load_model
    from circuitry.circuits import METHODS

    model = load_model("tiny-dense")
    assert METHODS == ("eap", "eap-local", "eap-ig", "eap-ig-node", "exact")
    with pytest.raises(CircuitryError, match=r"unknown attribution method 'exact'; .* \(exact patching is exact_edge_scores\)"):
        eap_scores(model, get_task("ioi", model), Graph.from_model(model), "exact", n=2)


def test_gradient_methods_run_under_no_grad_and_refuse_inference_mode():
    """Notebooks often switch autograd off at the top: the scores are the same; inference mode is refused."""
    model = build_model(BASE, None, seed=0)
    graph, batch = Graph.from_model(model), random_batch(0)
    for method in ("eap", "eap-local", "eap-ig", "eap-ig-node"):
        ref = eap_scores(model, batch, graph, method, ig_steps=2, metric=logit_diff)
        with torch.no_grad():
            assert torch.equal(eap_scores(model, batch, graph, method, ig_steps=2, metric=logit_diff), ref), method
        with torch.inference_mode(), pytest.raises(CircuitryError, match="attribution patching needs gradients: call it outside torch.inference_mode"):
            eap_scores(model, batch, graph, method, ig_steps=2, metric=logit_diff)
    assert torch.is_grad_enabled()  # and the caller's setting is back
