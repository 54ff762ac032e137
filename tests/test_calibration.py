import math

import pytest
import torch

from prunerzero.calibration import BlockRunner, Stats, activation_stats, cached_stats, gradient_stats
from prunerzero.evaluate import perplexity, window_losses
from prunerzero.metric import parse
from prunerzero.models import all_prunable, decoder_layers
from prunerzero.prune.masks import Pattern, parse_pattern
from prunerzero.prune.run import SPARSEGPT, prune_model
from prunerzero.prune.sparsegpt import sparsegpt_prune


def direct_inputs(model, windows):
    """Inputs of every prunable Linear over a full-model forward, one window at a time."""
    seen = {k: [] for k in all_prunable(model)}
    hooks = [lin.register_forward_hook(lambda m, i, o, k=k: seen[k].append(i[0].detach().reshape(-1, i[0].shape[-1])))
             for k, lin in all_prunable(model).items()]
    with torch.no_grad():
        for w in windows:
            model(w[None])
    for h in hooks:
        h.remove()
    return {k: torch.cat(v) for k, v in seen.items()}


def test_activation_stats_match_direct_computation(tiny, windows):
    stats = activation_stats(tiny, windows, batch_size=4, progress=False)
    for key, x in direct_inputs(tiny, windows).items():
        expected = (x.double() ** 2).sum(0) / windows.shape[0]  # Wanda: divided by the number of sequences
        torch.testing.assert_close(stats.tensors[key]["X"].double(), expected, rtol=1e-5, atol=1e-8)


def test_block_runner_reproduces_the_model(tiny, windows):
    runner = BlockRunner(tiny, windows, batch_size=2)
    for block in decoder_layers(tiny):
        runner.advance(runner.run(block))
    hidden = torch.cat(runner.hidden)
    with torch.no_grad():
        ref = tiny(windows, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(tiny.model.norm(hidden), ref, rtol=1e-4, atol=1e-5)


def test_gradient_stats_match_autograd(tiny, windows):
    stats = gradient_stats(tiny, windows[:3], progress=False)
    linears = all_prunable(tiny)
    g1 = {k: 0 for k in linears}
    g2 = {k: 0 for k in linears}
    for w in windows[:3]:
        loss = tiny(input_ids=w[None], labels=w[None]).loss
        grads = torch.autograd.grad(loss, [l.weight for l in linears.values()])
        for k, g in zip(linears, grads):
            g1[k] = g1[k] + (100 * g).abs()
            g2[k] = g2[k] + (100 * g) ** 2
    for k in linears:
        torch.testing.assert_close(stats.tensors[k]["G1"], g1[k], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(stats.tensors[k]["G2"], g2[k].sqrt(), rtol=1e-4, atol=1e-6)
    # nothing is left behind: no .grad, requires_grad restored
    assert all(p.grad is None for p in tiny.parameters())
    assert all(p.requires_grad for p in tiny.parameters())


def test_gradient_stats_of_a_half_model_run_in_fp32_and_leave_it_unchanged(tiny, windows):
    """A bf16/fp16 model is cast to fp32 for the backward passes (its tiny gradients would underflow) and every
    tensor goes back to its own dtype afterwards: weights bf16 again, bit-exact, rotary buffers still fp32."""
    fp32_buffers = {n: b.clone() for n, b in tiny.named_buffers()}
    half = tiny.to(torch.bfloat16)
    for name, buf in half.named_buffers():  # as in a checkpoint loaded in bf16: rotary inv_freq stays fp32
        buf.data = fp32_buffers[name]
    before = {n: p.detach().clone() for n, p in half.named_parameters()}
    stats = gradient_stats(half, windows[:2], progress=False)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    assert all(torch.equal(before[n], p) for n, p in half.named_parameters())
    assert all(b.dtype == torch.float32 for b in half.buffers())
    ref = gradient_stats(make_tiny_from(before), windows[:2], progress=False)
    for k in stats.tensors:
        torch.testing.assert_close(stats.tensors[k]["G2"], ref.tensors[k]["G2"], rtol=1e-4, atol=1e-6)
    kept = gradient_stats(half, windows[:2], progress=False, upcast=False)  # the model's own precision
    assert not all(torch.equal(stats.tensors[k]["G2"], kept.tensors[k]["G2"]) for k in stats.tensors)


def test_gradient_pass_keeps_fp32_by_moving_its_accumulators_to_cpu_memory():
    """Llama-2-7B in fp16 on one GPU (6.738 B parameters, 6.476 B prunable): with 200 GB free the fp32 copy and the
    G1/G2 accumulators stay on it; on an 80 GB card (65 GB free next to the fp16 weights) the accumulators (52 GB) go
    to CPU memory and the gradients stay fp32; only when even the fp32 copy does not fit is fp32 given up."""
    from prunerzero.calibration.gradients import gradient_plan, plan

    p, q = 6_738_000_000, 6_476_000_000
    assert plan(p, q, True, 200e9) == (True, False)
    assert plan(p, q, True, 65e9) == (True, True)
    assert plan(p, q, True, 10e9) == (False, True)
    assert plan(p, q, True, 70e9, upcast=False) == (False, False)
    assert plan(p, q, True, 20e9, elsewhere=True) == (True, False)   # accumulators placed by the caller
    assert plan(p, q, False, 30e9) == (False, True)                  # an fp32 model: accumulators only
    from conftest import make_tiny

    assert gradient_plan(make_tiny(), None) == (False, None)         # CPU: where it is
    assert gradient_plan(make_tiny().to(torch.bfloat16), None) == (True, None)


def make_tiny_from(params: dict):
    """An fp32 tiny LLaMA holding the given parameters (upcast)."""
    from conftest import make_tiny

    model = make_tiny()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(params[n].float())
    return model


def test_stats_cache_roundtrip(tmp_path, tiny, windows):
    calls = []

    def compute():
        calls.append(1)
        return activation_stats(tiny, windows, progress=False)

    a = cached_stats(tmp_path, "k1", compute)
    b = cached_stats(tmp_path, "k1", compute)
    assert len(calls) == 1
    assert (tmp_path / "stats" / "k1.safetensors").is_file()
    for k in a.tensors:
        assert torch.equal(a.tensors[k]["X"], b.tensors[k]["X"])
    (tmp_path / "stats" / "k1.safetensors").write_bytes(b"garbage")
    cached_stats(tmp_path, "k1", compute)
    assert len(calls) == 2  # a corrupt cache is recomputed, not trusted


def test_sequential_stats_come_from_pruned_blocks(tiny, windows):
    """Block 1's X in sequential mode equals X measured on a model whose block 0 alone is pruned."""
    import copy

    formula, pattern = parse("mul(abs(W), sqrt(X))"), Pattern(0.5, "row")
    ref = copy.deepcopy(tiny)
    seq = copy.deepcopy(tiny)
    captured = {}
    import prunerzero.prune.run as run_mod
    orig = run_mod.metric_mask

    def spy(f, env, p, where=""):
        captured[where] = env["X"].clone()
        return orig(f, env, p, where)

    run_mod.metric_mask = spy
    try:
        prune_model(seq, formula, pattern, windows, sequential=True, progress=False)
    finally:
        run_mod.metric_mask = orig
    # reference: prune block 0 of `ref` exactly as the sequential run did, then measure block 1 inputs directly
    for name, lin in all_prunable(ref).items():
        if name.startswith("layers.0."):
            lin.weight.data.copy_(all_prunable(seq)[name].weight.data)
    x = direct_inputs(ref, windows)
    for name in ("layers.1.self_attn.q_proj", "layers.1.mlp.up_proj"):
        expected = (x[name].double() ** 2).sum(0) / windows.shape[0]
        torch.testing.assert_close(captured[name].view(-1).double(), expected, rtol=1e-4, atol=1e-7)
    # and the one-shot run sees the dense inputs instead
    dense_x = activation_stats(tiny, windows, progress=False).tensors["layers.1.self_attn.q_proj"]["X"]
    assert not torch.allclose(dense_x, captured["layers.1.self_attn.q_proj"].view(-1))


def test_perplexity_matches_hand_computation(tiny, windows):
    with torch.no_grad():
        nll = []
        for w in windows:
            logp = torch.log_softmax(tiny(w[None]).logits[0, :-1].double(), -1)
            nll.append(-logp.gather(1, w[1:, None]).mean())
    expected = math.exp(torch.stack(nll).mean().item())
    assert perplexity(tiny, windows, batch_size=4) == pytest.approx(expected, rel=1e-5)
    assert perplexity(tiny, windows, batch_size=1) == pytest.approx(expected, rel=1e-5)
    assert window_losses(tiny, windows).shape == (windows.shape[0],)


def test_sparsegpt_beats_masking_on_reconstruction():
    torch.manual_seed(0)
    x = torch.randn(512, 64) @ torch.randn(64, 64)  # correlated inputs
    w = torch.randn(32, 64)
    H = 2 * x.t() @ x / 512
    for pattern in (Pattern(0.5, "row"), parse_pattern(pattern="2:4")):
        new = sparsegpt_prune(w, H, pattern, blocksize=16)
        zeros = new == 0
        if pattern.is_nm:
            assert (zeros.view(32, 16, 4).sum(-1) == 2).all()
        else:
            # exact count in each 16-column block (adaptive mask selection)
            assert all(int(zeros[:, i:i + 16].sum()) == int(32 * 16 * 0.5) for i in range(0, 64, 16))
        naive = w * ~zeros  # same mask, no reconstruction
        err = ((new - w) @ x.t()).norm()
        assert err < 0.9 * ((naive - w) @ x.t()).norm()


def test_sparsegpt_in_layer_loop(tiny, windows):
    prune_model(tiny, SPARSEGPT, Pattern(0.5, "row"), windows, sequential=True, blocksize=32, progress=False)
    total = sum(l.weight.numel() for l in all_prunable(tiny).values())
    zeros = sum(int((l.weight == 0).sum()) for l in all_prunable(tiny).values())
    assert zeros == total // 2


def test_stats_env_shapes(tiny, windows):
    stats = activation_stats(tiny, windows[:2], progress=False).merged(gradient_stats(tiny, windows[:2], progress=False))
    lin = all_prunable(tiny)["layers.0.mlp.down_proj"]
    env = stats.env("layers.0.mlp.down_proj", lin.weight)
    assert env["W"].shape == env["G"].shape == env["G1"].shape == lin.weight.shape
    assert env["X"].shape == (1, lin.in_features)
    assert isinstance(stats, Stats) and stats.terms() == {"X", "G1", "G2"}


def test_half_scaled_keeps_every_magnitude_to_fp16_precision():
    from prunerzero.calibration.cache import half_scaled

    g = torch.Generator().manual_seed(0)
    for top in (1e-9, 1.0, 7e4, 3e9):   # below, inside and above fp16's range: the scale moves the values into it
        t = torch.rand(4096, generator=g) * top
        half, scale = half_scaled(t)
        assert half.dtype == torch.float16 and math.log2(float(scale)).is_integer()
        assert 2 ** 15 <= float(half.float().max()) <= 65504
        back = half.float() * scale
        big = t > t.max() * 2 ** -25     # fp16 normals below the top binade: 11 significant bits
        assert ((back - t).abs() / t)[big].max() <= 2 ** -11
        assert torch.isfinite(back).all() and torch.equal(back, half_scaled(t)[0].float() * scale)
    zeros, scale = half_scaled(torch.zeros(3))
    assert not zeros.any() and float(scale) == 1.0


def test_fp16_gradient_storage_halves_the_file_and_reorders_only_near_ties(tmp_path, tiny, windows):
    """fp16 storage (one power-of-two scale per tensor): fp32 values back to 2^-11, half the file, its own cache key,
    and a G formula's mask differs from fp32's only where a weight's fp32 score is within 2^-10 of the threshold."""
    from prunerzero.calibration.cache import SCALE
    from prunerzero.metric.expr import evaluate
    from prunerzero.prune.masks import mask_from_scores

    full = gradient_stats(tiny, windows[:3], progress=False)
    half = gradient_stats(tiny, windows[:3], progress=False, storage="fp16")
    full.save(tmp_path / "full.safetensors")
    half.save(tmp_path / "half.safetensors")
    ratio = (tmp_path / "half.safetensors").stat().st_size / (tmp_path / "full.safetensors").stat().st_size
    assert 0.45 < ratio < 0.55
    back = Stats.load(tmp_path / "half.safetensors")
    assert back.terms() == full.terms() == {"G1", "G2"} and back.meta["grad_storage"] == "fp16"
    formula, pattern = parse("mul(abs(W), G)"), Pattern(0.5, "row")
    flips = 0
    for key, lin in all_prunable(tiny).items():
        assert back.tensors[key]["G2"].dtype == torch.float16 and SCALE + "G2" in back.tensors[key]
        a, b = full.value(key, "G2"), back.value(key, "G2")
        assert ((a - b).abs() <= a * 2 ** -11 + a.max() * 2 ** -24).all()
        sa = evaluate(formula, full.env(key, lin.weight))
        sb = evaluate(formula, back.env(key, lin.weight))
        ma, mb = mask_from_scores(sa, pattern), mask_from_scores(sb, pattern)
        differ = ma != mb
        flips += int(differ.sum())
        # each row's threshold: its largest pruned fp32 score; a flipped weight's score is a near-tie of it
        thr = torch.where(ma, sa, torch.full_like(sa, -1.0)).amax(1, keepdim=True).expand_as(sa)
        assert ((sa[differ] - thr[differ]).abs() <= thr[differ] * 2 ** -10).all()
    assert flips < 0.01 * sum(lin.weight.numel() for lin in all_prunable(tiny).values())
    with pytest.raises(Exception, match="storage 'bf8' is unknown"):
        gradient_stats(tiny, windows[:1], progress=False, storage="bf8")
