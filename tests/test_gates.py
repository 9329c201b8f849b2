"""Sparsity gates: exactness, finite gradients, detach, architectures, connectivity vs brute force."""

import pytest
import torch

from circuitry.errors import CircuitryError
from circuitry.sparsity.connectivity import floor, measure_connectivity
from circuitry.sparsity.gates import AttentionGates, attach_gates, detach_gates
from circuitry.zoo.registry import build_model

from random_models import ARCHS, BASE


def make(arch="gpt2-style", seed=0):
    return build_model({**BASE, **ARCHS[arch]}, seed=seed)


def tokens(seed=0, batch=3, pos=12):
    return torch.randint(0, 50, (batch, pos), generator=torch.Generator().manual_seed(seed))


def test_gate_values_on_a_hand_computed_example():
    gates = AttentionGates(1, 1, bias_init=0.5)
    inf = float("-inf")
    scores = torch.tensor([[[[1.0, inf, inf], [-0.2, -1.0, inf], [-0.6, 0.3, -0.4]]]])
    logits = gates.gate_logits(scores, 0)
    expected_logits = torch.tensor([[[[1.5, inf, inf], [0.3, -0.5, inf], [-0.1, 0.8, 0.1]]]])
    assert torch.equal(torch.isfinite(logits), torch.isfinite(expected_logits))
    assert torch.allclose(logits[torch.isfinite(logits)], expected_logits[torch.isfinite(expected_logits)])
    z = gates.set_mode("eval").gate_values(logits)
    assert z.tolist() == [[[[1, 0, 0], [1, 0, 0], [0, 1, 1]]]]
    pattern = scores.softmax(-1)
    gates._scores_hook(scores, None, 0)
    # row 2: softmax([-0.6, 0.3, -0.4]) with key 0 dropped and no renormalisation
    e = torch.tensor([-0.6, 0.3, -0.4]).exp()
    gated_row = (e / e.sum()) * torch.tensor([0.0, 1.0, 1.0])
    assert torch.allclose(gates._pattern_hook(pattern, None, 0)[0, 0, 2], gated_row)
    gates.renormalise = True
    assert torch.allclose(gates._pattern_hook(pattern, None, 0)[0, 0, 2], gated_row / gated_row.sum())


@pytest.mark.parametrize("arch", list(ARCHS))
def test_gated_pattern_matches_reference_from_scores(arch):
    model, x = make(arch), tokens()
    _, dense_cache = model.run_with_cache(x)
    gates = attach_gates(model, bias_init=0.0, mode="eval")
    with torch.no_grad():
        gates.bias.copy_(torch.linspace(-0.3, 0.3, gates.bias.numel()).view_as(gates.bias))
    _, cache = model.run_with_cache(x)
    assert torch.equal(cache["blocks.0.attn.hook_attn_scores"], dense_cache["blocks.0.attn.hook_attn_scores"])
    for layer in range(model.cfg.n_layers):
        s = cache[f"blocks.{layer}.attn.hook_attn_scores"]  # scores are read, never changed, by the gates
        keep = torch.isfinite(s) & (s + gates.bias[layer][None, :, None, None] > 0)
        reference = s.softmax(-1) * keep
        assert torch.allclose(cache[f"blocks.{layer}.attn.hook_pattern"], reference, atol=1e-6)
    assert not torch.allclose(model(x), make(arch)(x))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_train_mode_gradients_are_finite(arch):
    model = make(arch)
    gates = attach_gates(model, bias_init=1.0, mode="train")
    torch.manual_seed(0)
    loss = model(tokens(), return_type="loss")
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert gates.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", list(ARCHS))
def test_detach_restores_the_dense_model_bit_for_bit(arch):
    model, x = make(arch), tokens(1)
    before = model(x)
    attach_gates(model, bias_init=-0.1, mode="eval")
    assert not torch.equal(model(x), before)
    with pytest.raises(CircuitryError, match="already has gates"):
        attach_gates(model)
    detach_gates(model)
    assert torch.equal(model(x), before)
    assert not any("gates" in n for n, _ in model.named_parameters())
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())


def test_off_mode_keeps_logits_and_eval_with_huge_bias_is_dense():
    model, x = make(), tokens(2)
    before = model(x)
    gates = attach_gates(model, mode="off")
    assert torch.equal(model(x), before)
    gates.set_mode("eval")
    with torch.no_grad():
        gates.bias.fill_(1e6)
    assert torch.equal(model(x), before)


def test_scoring_a_gated_model_with_gradients_leaves_no_graph_behind():
    """An eval-mode forward + backward (what EAP does) keeps no autograd graph in the gates, so the model
    still deep-copies, and the copy gates identically with gates of its own; train mode keeps the graph the
    regulariser needs."""
    import copy

    model, x = make(), tokens(4)
    gates = attach_gates(model, mode="eval", bias_init=0.0)
    model(x)[:, -1].sum().backward()
    assert gates.last_logits and all(t.grad_fn is None for t in gates.last_logits.values())
    twin = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(twin(x), model(x))
        assert twin.gates is not gates and model.gates is gates  # the copy has gates of its own
        twin.gates.bias.fill_(-100.0)  # every gate of the copy shut: the copy reads nothing, the original is unchanged
        assert not torch.equal(twin(x), model(x)) and torch.equal(model(x), copy.deepcopy(model)(x))
        assert measure_connectivity(twin, x).connectivity == 0.0 and measure_connectivity(model, x).connectivity > 0
    assert detach_gates(copy.deepcopy(model)) is not None and model.gates is gates
    gates.set_mode("train")
    model(x)
    assert all(t.grad_fn is not None for t in gates.last_logits.values())


def test_connectivity_matches_a_brute_force_count():
    model, x = make(), tokens(3, batch=4, pos=10)
    gates = attach_gates(model, mode="eval")
    with torch.no_grad():
        gates.bias.copy_(torch.randn(gates.bias.shape, generator=torch.Generator().manual_seed(0)))
    valid = torch.ones_like(x, dtype=torch.bool)
    valid[1, 7:] = False  # right padding
    valid[3, 4:] = False
    report = measure_connectivity(model, x, valid)
    model(x)
    kept = total = 0
    per_head = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    no_key = torch.zeros(model.cfg.n_layers)  # (query, head) pairs with no key kept
    pairs = 0
    for layer, logits in gates.last_logits.items():
        for b in range(x.shape[0]):
            n = int(valid[b].sum())
            for h in range(model.cfg.n_heads):
                for q in range(n):
                    row = 0
                    for k in range(q + 1):
                        row += int(logits[b, h, q, k] > 0)
                        per_head[layer, h] += float(logits[b, h, q, k] > 0)
                        total += 1
                    kept += row
                    no_key[layer] += row == 0
    lengths = valid.sum(1)
    pairs = int((lengths * (lengths + 1) // 2).sum())
    assert report.connectivity == pytest.approx(kept / total, abs=1e-12)
    assert report.keys_per_query == pytest.approx(kept / (int(valid.sum()) * model.cfg.n_layers * model.cfg.n_heads))
    assert torch.allclose(torch.tensor(report.per_head), per_head / pairs, atol=1e-6)
    n_rows = int(valid.sum()) * model.cfg.n_heads
    assert 0 < report.no_key == pytest.approx(float(no_key.sum()) / (n_rows * model.cfg.n_layers), abs=1e-12)
    assert report.no_key_per_layer == pytest.approx((no_key / n_rows).tolist(), abs=1e-6)
    assert report.floor == pytest.approx(int(valid.sum()) / pairs)
    assert floor(10) == pytest.approx(2 / 11)


def test_dense_model_keeps_every_edge():
    report = measure_connectivity(make(), tokens(pos=9))
    assert report.connectivity == 1.0 and report.keys_per_query == pytest.approx(5.0)  # (T+1)/2 at T=9
    assert report.floor == pytest.approx(2 / 10)


def test_non_finite_bias_and_removed_hooks_are_refused():
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(CircuitryError, match="bias_init must be a finite number"):
            attach_gates(make(), bias_init=bad)
    model, x = make(), tokens(pos=9)
    attach_gates(model)
    model(x)  # leaves the gate logits of this forward behind
    model.reset_hooks(including_permanent=True)  # TransformerLens removes the gate hooks; model.gates stays
    with pytest.raises(CircuitryError, match="its gate hooks did not run"):
        measure_connectivity(model, x)


class _StraightThroughGate(torch.autograd.Function):
    """Reference for the fused gate, from separate ops. Forward: the hard gate 1[noisy > 0]. Backward: the
    gradient of sigmoid(noisy) (straight-through); it is 0 where noisy = -inf."""

    @staticmethod
    def forward(ctx, noisy: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(noisy)
        return (noisy > 0).to(noisy.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (noisy,) = ctx.saved_tensors
        s = torch.sigmoid(noisy)
        return grad * (s * (1 - s))


def test_fused_noisy_gate_equals_the_unfused_reference():
    """The fused train-mode function gives the same output and gradients as pattern × straight-through
    gate built from separate ops, masked (-inf) entries included."""
    from circuitry.sparsity.gates import _NoisyGatedPattern

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 3, 5, 5, generator=g).masked_fill(torch.triu(torch.ones(5, 5, dtype=torch.bool), 1), float("-inf"))
    pattern = torch.softmax(scores, -1)
    u = torch.rand(2, 3, 5, 5, generator=g)
    grad = torch.randn(2, 3, 5, 5, generator=g)
    outs, grads = [], []
    for fused in (True, False):
        p, s = pattern.clone().requires_grad_(True), scores.clone().requires_grad_(True)
        out = _NoisyGatedPattern.apply(p, s, u.clone()) if fused else p * _StraightThroughGate.apply(s + torch.logit(u, eps=1e-6))
        out.backward(grad)
        outs.append(out.detach())
        grads.append((p.grad, s.grad))
    assert torch.equal(outs[0], outs[1])
    assert torch.allclose(grads[0][0], grads[1][0]) and torch.allclose(grads[0][1], grads[1][1], atol=1e-7)
    assert torch.isfinite(grads[0][1]).all()


def test_connectivity_report_measures_ce_with_the_gates_it_counts():
    """Its CE is the deterministic-gate model's, whatever mode the gates were left in (train mode is noisy, off
    is the dense model), and the mode is restored."""
    from circuitry import load_model
    from circuitry.sparsity import connectivity_report

    model = load_model("tiny-sparse")
    reports = {}
    for mode in ("eval", "train", "off"):
        model.gates.set_mode(mode)
        reports[mode] = connectivity_report(model, n=16)
        assert model.gates.mode == mode
    assert reports["train"].ce == reports["eval"].ce == reports["off"].ce
    assert reports["train"].connectivity == reports["eval"].connectivity


def test_connectivity_report_streams_the_same_figures_as_one_big_batch():
    """Prompts and held-out text are drawn batch by batch (bounded memory for any n); the figures equal those of
    measure_connectivity on everything at once (one right-padded batch), and held-out CE those of the whole tensor."""
    from circuitry import get_task, load_model
    from circuitry.data import heldout_batches, token_source
    from circuitry.sparsity import connectivity_report

    model = load_model("tiny-sparse")
    task = get_task("ioi", model)
    assert task.pairs(150, 3) == [p for b in task.batches(150, 3, batch_size=64) for p in b.pairs]
    whole = task.tokenize(task.pairs(150, 3))
    valid = torch.arange(whole.clean.shape[1])[None, :] <= whole.answer_pos[:, None]
    streamed, at_once = connectivity_report(model, task, n=150, seed=3), measure_connectivity(model, whole.clean, valid)
    assert streamed.n_sequences == 150 and streamed.seq_len == at_once.seq_len
    assert streamed.connectivity == pytest.approx(at_once.connectivity, abs=1e-12)
    assert streamed.per_head == at_once.per_head and streamed.keys_per_query == pytest.approx(at_once.keys_per_query)
    stream = token_source(model)
    batches, n_batches = heldout_batches(stream, 100, 20, batch_size=32)
    drawn = list(batches)
    assert n_batches == len(drawn) == 4 and torch.equal(torch.cat(drawn), stream.heldout(100, 20))
