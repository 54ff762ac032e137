"""Procedures beyond a metric: OBS reconstruction after any mask, the Hessian terminal Hd, OWL allocation, N:M with
input-channel permutation."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import make_tiny
from prunerzero import data
from prunerzero.calibration import BlockRunner, InputStats, activation_stats
from prunerzero.errors import UserError
from prunerzero.metric.expr import parse
from prunerzero.models import all_prunable, decoder_layers, prunable_linears
from prunerzero.prune.allocation import Allocation, allocate, block_sparsities, layer_counts
from prunerzero.prune.masks import Pattern, mask_from_scores, parse_pattern
from prunerzero.prune.permute import find_permutation, kept_mass
from prunerzero.prune.run import SPARSEGPT, metric_masks, prune_model
from prunerzero.prune.sparsegpt import obs_diag, obs_update, sparsegpt_prune

WANDA = parse("mul(abs(W), sqrt(X))")
TWO_FOUR = parse_pattern(pattern="2:4")


# ------------------------------------------------------------------------------------ reconstruction after a mask
@pytest.mark.real
def test_obs_update_reduces_output_error_on_a_real_smollm2_layer(smollm2):
    """Wanda's mask on SmolLM2 block 0, real C4 calibration inputs: the OBS update lowers ||(W' - W) X||."""
    windows = data.calibration_windows(smollm2.tokenizer, nsamples=2, seqlen=128, seed=0)
    block = decoder_layers(smollm2.model)[0]
    linears = prunable_linears(block)
    names = ("self_attn.q_proj", "mlp.down_proj")
    runner = BlockRunner(smollm2.model, windows)
    inputs = {n: [] for n in names}
    hooks = {n: InputStats(linears[n], hessian=True) for n in names}
    taps = [linears[n].register_forward_hook(lambda _m, i, _o, n=n: inputs[n].append(i[0].detach().reshape(
        -1, i[0].shape[-1]))) for n in names]
    runner.run(block)
    for h in list(hooks.values()) + taps:
        h.remove()
    for n in names:
        x = torch.cat(inputs[n])                                     # [tokens, in]
        w = linears[n].weight.detach().float()
        mask = mask_from_scores(w.abs() * hooks[n].X.view(1, -1).sqrt(), Pattern(0.5))
        new = obs_update(w, hooks[n].H, mask)
        assert torch.equal(new == 0, mask)                            # the metric's mask, exactly, nothing else
        err_mask = ((w * ~mask - w) @ x.t()).norm()
        err_obs = ((new - w) @ x.t()).norm()
        assert err_obs < 0.8 * err_mask, n


def _correlated(seed=0, tokens=512, cols=64):
    torch.manual_seed(seed)
    x = torch.randn(tokens, cols) @ torch.randn(cols, cols)
    return x, 2 * x.t() @ x / tokens


@pytest.mark.parametrize("pattern", [Pattern(0.5, "row"), TWO_FOUR])
def test_fixed_mask_obs_with_sparsegpts_own_mask_reproduces_sparsegpt(pattern):
    x, H = _correlated()
    w = torch.randn(32, 64)
    ref, mask = sparsegpt_prune(w, H, pattern, blocksize=16, return_mask=True)
    assert torch.equal(ref == 0, mask)
    same = obs_update(w, H, mask, blocksize=16)
    assert torch.allclose(same, ref, atol=1e-6, rtol=0)
    # the blocksize only groups the lazy updates: another blocksize gives the same weights up to rounding
    assert torch.allclose(obs_update(w, H, mask, blocksize=64), ref, atol=1e-4, rtol=1e-4)
    # with a different (Wanda-like) mask the update still beats plain masking on the calibration inputs
    wanda = mask_from_scores(w.abs() * torch.diag(H).sqrt().view(1, -1), Pattern(0.5, "row"))
    upd = obs_update(w, H, wanda)
    assert ((upd - w) @ x.t()).norm() < ((w * ~wanda - w) @ x.t()).norm()


def test_update_in_the_layer_loop_keeps_the_metrics_mask(windows):
    """One-shot statistics are the same with and without the update, so the masks are identical; only the kept
    weights change, and the block outputs move closer to the dense ones."""
    dense, plain, updated = make_tiny(), make_tiny(), make_tiny()
    prune_model(plain, WANDA, Pattern(0.5), windows, sequential=False, progress=False)
    prune_model(updated, WANDA, Pattern(0.5), windows, sequential=False, progress=False, update="obs")
    lp, lu = all_prunable(plain), all_prunable(updated)
    for key in lp:
        assert torch.equal(lp[key].weight == 0, lu[key].weight == 0), key
    assert any(not torch.equal(lp[k].weight, lu[k].weight) for k in lp)
    with torch.no_grad():
        ref = dense(windows).logits
        e_plain = (plain(windows).logits - ref).norm()
        e_upd = (updated(windows).logits - ref).norm()
    assert e_upd < e_plain
    with pytest.raises(UserError, match="sparsegpt"):
        prune_model(make_tiny(), SPARSEGPT, Pattern(0.5), windows, update="obs", progress=False)
    with pytest.raises(UserError, match="unknown update"):
        prune_model(make_tiny(), WANDA, Pattern(0.5), windows, update="lbfgs", progress=False)


# ------------------------------------------------------------------------------------------- the terminal Hd
def test_hd_matches_a_direct_inverse_and_generalises_x(tiny, windows):
    _, H = _correlated(cols=24)
    damp = 0.01 * torch.diag(H).mean()
    direct = 1 / torch.diag(torch.linalg.inv(H.double() + damp.double() * torch.eye(24, dtype=torch.float64)))
    assert torch.allclose(obs_diag(H).view(-1).double(), direct, rtol=1e-5)
    diag = torch.diag(torch.tensor([1.0, 2.0, 4.0]))                 # uncorrelated inputs: Hd = diag(H) + damp
    assert torch.allclose(obs_diag(diag), torch.tensor([[1.0, 2.0, 4.0]]) + 0.01 * 7 / 3)
    # one-shot statistics carry Hd as [1, in]; H = 2/n X X^T so diag(H) = 2 X
    stats = activation_stats(tiny, windows, progress=False, hessian=True)
    lin = all_prunable(tiny)["layers.1.mlp.down_proj"]
    env = stats.env("layers.1.mlp.down_proj", lin.weight)
    assert env["Hd"].shape == (1, lin.in_features) and bool((env["Hd"] > 0).all())
    h = InputStats(lin, hessian=True)
    runner = BlockRunner(tiny, windows)
    runner.advance(runner.run(decoder_layers(tiny)[0]))
    runner.run(decoder_layers(tiny)[1])
    h.remove()
    assert torch.allclose(env["Hd"], obs_diag(h.H), rtol=1e-4)
    assert torch.allclose(torch.diag(h.H), 2 * h.X, rtol=1e-4)
    masks = metric_masks(parse("mul(sqr(W), Hd)"), all_prunable(tiny), stats, Pattern(0.5))
    assert all(int(m.sum()) == m.numel() // 2 for m in masks.values())


# -------------------------------------------------------------------------------------------------- OWL
def _x_of(stats):
    return lambda b, n: stats.tensors[f"layers.{b}.{n}"]["X"]


@pytest.mark.parametrize("group", ["row", "layer"])
def test_owl_allocation_keeps_the_total_sparsity_exact(windows, group):
    model = make_tiny(layers=4)
    stats = activation_stats(model, windows, progress=False)
    pattern = Pattern(0.5, group)
    counts = allocate(model, Allocation("owl", lam=0.08, m=2.0), pattern, _x_of(stats))
    linears = all_prunable(model)
    total = sum(lin.weight.numel() for lin in linears.values())
    gran = {k: (lin.out_features if group == "row" else 1) for k, lin in linears.items()}
    planned = sum(counts[k] * gran[k] for k in linears)
    assert 0 <= int(total * 0.5) - planned < min(gran.values())
    block_sp = [sum(counts[f"layers.{b}.{n}"] * gran[f"layers.{b}.{n}"] for n in prunable_linears(blk))
                / sum(lin.weight.numel() for lin in prunable_linears(blk).values())
                for b, blk in enumerate(decoder_layers(model))]
    assert max(block_sp) - min(block_sp) > 0.05                      # really non-uniform (spread up to 2 lambda)
    pruned = prune_model(model, WANDA, pattern, windows, sequential=True, progress=False, counts=counts)
    assert sum(pruned.values()) == planned == sum(int((lin.weight == 0).sum()) for lin in linears.values())
    if group == "row":  # every row of a layer loses the same count
        for k, lin in linears.items():
            assert ((lin.weight == 0).sum(1) == counts[k]).all(), k


def test_owl_allocation_drives_sparsegpt_per_layer(windows):
    """OWL + SparseGPT: each layer is pruned by SparseGPT at its allocated sparsity (its count per row as a
    fraction); SparseGPT selects within blocks of columns, so a layer meets its count up to one weight per block.
    Uniform counts reproduce plain SparseGPT exactly."""
    model = make_tiny(layers=4)
    stats = activation_stats(model, windows, progress=False)
    pattern = Pattern(0.5)
    counts = allocate(model, Allocation("owl", lam=0.08, m=2.0), pattern, _x_of(stats))
    linears = all_prunable(model)
    prune_model(model, SPARSEGPT, pattern, windows, sequential=True, progress=False, counts=counts)
    for key, lin in linears.items():
        blocks = -(-lin.in_features // 128)
        zeros = int((lin.weight == 0).sum())
        assert 0 <= counts[key] * lin.out_features - zeros <= blocks, key
    assert len({counts[k] for k in linears if k.endswith("mlp.down_proj")}) > 1   # really non-uniform
    plain, uniform = make_tiny(layers=4), make_tiny(layers=4)
    prune_model(plain, SPARSEGPT, pattern, windows, sequential=True, progress=False)
    flat = {k: lin.in_features // 2 for k, lin in all_prunable(uniform).items()}
    prune_model(uniform, SPARSEGPT, pattern, windows, sequential=True, progress=False, counts=flat)
    for key, lin in all_prunable(plain).items():
        assert torch.equal(lin.weight, all_prunable(uniform)[key].weight), key


def test_allocation_family_and_its_validation():
    sizes = [100, 100, 100, 100]
    owl = block_sparsities(Allocation("owl", lam=0.1), 0.5, sizes, ratios=[0.01, 0.03, 0.02, 0.05])
    assert owl[3] == min(owl) and owl[0] == max(owl)                 # more outliers, less pruning
    assert max(owl) - min(owl) == pytest.approx(0.2) and sum(owl) / 4 == pytest.approx(0.5)
    lin = block_sparsities(Allocation("linear", slope=0.2), 0.6, [1, 2, 3])
    assert lin[0] < lin[1] < lin[2] and (lin[0] * 1 + lin[1] * 2 + lin[2] * 3) / 6 == pytest.approx(0.6)
    assert block_sparsities(Allocation("owl", lam=0.1), 0.5, sizes, [0.02] * 4) == [0.5] * 4
    assert Allocation.from_dict(Allocation("owl", lam=0.05, m=7).to_dict()) == Allocation("owl", 0.05, 7.0)
    with pytest.raises(UserError, match="outside"):
        block_sparsities(Allocation("owl", lam=0.3), 0.9, sizes, ratios=[0.0, 0.1, 0.2, 0.3])
    for bad in ({"kind": "random"}, {"kind": "owl", "lam": -1}, {"kind": "owl", "m": 0}, {"kind": "owl", "x": 1},
                {"kind": "owl", "lam": "much"}):
        with pytest.raises(UserError):
            Allocation.from_dict(bad)
    with pytest.raises(UserError, match="unstructured"):
        layer_counts({"a": (4, 8, 0.5)}, TWO_FOUR)
    # odd layer sizes: the per-row total is still within one granule (the smallest row count) of the target
    layers = {"a": (7, 33, 0.41), "b": (3, 50, 0.62), "c": (11, 17, 0.47)}
    counts = layer_counts(layers, Pattern(0.5, "row"))
    total = 7 * 33 + 3 * 50 + 11 * 17
    assert 0 <= int(total * 0.5) - (7 * counts["a"] + 3 * counts["b"] + 11 * counts["c"]) < 3


# ------------------------------------------------------------------------------------ N:M channel permutation
def test_find_permutation_keeps_more_score_and_is_a_permutation():
    s = torch.ones(3, 8)
    s[:, 0] = s[:, 1] = 10.0                                         # 3:4 keeps one: the big two compete
    three_four = parse_pattern(pattern="3:4")
    perm = find_permutation(s, three_four)
    assert sorted(perm.tolist()) == list(range(8))
    assert kept_mass(s[:, perm], three_four) == 60.0 > kept_mass(s, three_four) == 33.0
    torch.manual_seed(0)
    r = torch.rand(16, 64) * torch.rand(1, 64) * 4
    assert kept_mass(r[:, find_permutation(r, TWO_FOUR)], TWO_FOUR) >= kept_mass(r, TWO_FOUR)


def _column_order(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """For each column of a pruned, column-permuted weight, the original column it holds (its kept entries)."""
    kept = new != 0
    match = ((old.unsqueeze(1) == new.unsqueeze(2)) | ~kept.unsqueeze(2)).all(0)   # [new col, old col]
    assert (match.sum(1) == 1).all()
    return match.float().argmax(1)


@pytest.mark.parametrize("update", ["none", "obs", "lsq"])
def test_permutation_is_valid_nm_in_the_saved_layout_and_matches_the_masked_model(windows, tmp_path, update):
    from transformers import AutoModelForCausalLM

    dense = make_tiny()
    pruned = copy.deepcopy(dense)
    prune_model(pruned, WANDA, TWO_FOUR, windows, sequential=False, progress=False, permute=True, update=update)
    heads, kv, hd = 4, 2, 16
    moved = False
    ref = copy.deepcopy(dense)
    for i, (blk_d, blk_p, blk_r) in enumerate(zip(decoder_layers(dense), decoder_layers(pruned),
                                                  decoder_layers(ref))):
        d, p, r = prunable_linears(blk_d), prunable_linears(blk_p), prunable_linears(blk_r)
        for lin in p.values():                                       # N:M in the stored order, every layer
            assert ((lin.weight == 0).view(lin.out_features, -1, 4).sum(-1) == 2).all()
        if update != "none":
            continue
        down = _column_order(p["mlp.down_proj"].weight, d["mlp.down_proj"].weight)
        o = _column_order(p["self_attn.o_proj"].weight, d["self_attn.o_proj"].weight)
        # o_proj: one within-head order per KV group, shared by the group's query heads; v rows follow it
        pis = [o[h * hd:(h + 1) * hd] - h * hd for h in range(heads)]
        assert all(((pi >= 0) & (pi < hd)).all() for pi in pis)
        assert torch.equal(pis[0], pis[1]) and torch.equal(pis[2], pis[3])
        vrows = torch.cat([g * hd + pis[g * (heads // kv)] for g in range(kv)])
        rows = {"mlp.gate_proj": down, "mlp.up_proj": down, "self_attn.v_proj": vrows}
        cols = {"mlp.down_proj": down, "self_attn.o_proj": o}
        moved |= not torch.equal(down, torch.arange(down.numel()))
        for n, lin in r.items():                                     # the masked model, in the original order
            zero = p[n].weight == 0
            if n in rows:
                zero = zero[torch.argsort(rows[n])]
                assert torch.equal(p[n].weight, d[n].weight[rows[n]] * ~zero[rows[n]])
            if n in cols:
                zero = zero[:, torch.argsort(cols[n])]
            with torch.no_grad():
                lin.weight.masked_fill_(zero, 0)
    if update == "none":
        assert moved
        with torch.no_grad():
            assert torch.allclose(pruned(windows).logits, ref(windows).logits, atol=1e-5)
    pruned.save_pretrained(tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    for lin in all_prunable(loaded).values():
        assert ((lin.weight == 0).view(lin.out_features, -1, 4).sum(-1) >= 2).all()
    with torch.no_grad():
        assert torch.allclose(loaded(windows).logits, pruned(windows).logits, atol=1e-6)
    with pytest.raises(UserError, match="N:M"):
        prune_model(make_tiny(), WANDA, Pattern(0.5), windows, permute=True, progress=False)


def test_cli_prune_with_update_owl_and_permute(tiny_model_dir, tmp_path, capsys):
    import json

    from prunerzero.cli import main

    common = ["prune", "--model", str(tiny_model_dir), "--nsamples", "2", "--seqlen", "64", "--eval-windows", "1",
              "--skip-dense", "--quiet", "--cache-dir", str(tmp_path / "cache")]
    assert main(common + ["--metric", "wanda", "--update", "obs", "--allocation", "owl", "--owl-m", "3", "--one-shot",
                          "--json", str(tmp_path / "a.json")]) == 0
    res = json.loads((tmp_path / "a.json").read_text())
    assert res["update"] == "obs" and res["allocation"] == "owl" and res["owl_m"] == 3.0
    assert abs(res["sparsity"] - 0.5) < 1e-3
    assert "one-shot, +OBS, OWL M 3]" in capsys.readouterr().out    # the summary names the procedure, as tables do
    assert main(common + ["--metric", "mul(sqr(W), Hd)", "--pattern", "2:4", "--permute", "--sequential"]) == 0
    out = capsys.readouterr().out
    assert "sparsity 0.5000" in out and "2:4, sequential, permuted]" in out
    ppl = {}
    for damp in ("0.01", "0.5"):  # SparseGPT's damping as an option: the default is the reference's 0.01
        extra = [] if damp == "0.01" else ["--percdamp", damp]
        assert main(common + ["--metric", "sparsegpt", "--sequential", "--json", str(tmp_path / "s.json")] + extra) == 0
        res = json.loads((tmp_path / "s.json").read_text())
        assert res["percdamp"] == float(damp)
        ppl[damp] = res["pruned"]["wikitext2"]["ppl"]
        assert ("damp 0.5]" in capsys.readouterr().out) == (damp == "0.5")
    assert ppl["0.5"] != ppl["0.01"]


def test_search_fitness_reads_the_hessian_terminal(tiny_model_dir, tmp_path):
    """A space with Hd gets it from the one-shot statistics (X and Hd cached in one safetensors file)."""
    import math

    from prunerzero.search.space import validate
    from prunerzero.search.workers import build_evaluator

    space = validate({"terminals": ["W", "X", "Hd"], "fitness": {"model": str(tiny_model_dir), "seqlen": 64,
                                                                 "nsamples": 2, "eval_windows": 1, "device": "cpu"}})
    ev = build_evaluator(space.fitness, space.raw["terminals"], cache=tmp_path / "cache", progress=False)
    assert ev.stats.terms() == {"X", "Hd"}
    obs, wanda = ev("mul(sqr(W), Hd)"), ev("mul(abs(W), sqrt(X))")
    assert obs.hit == wanda.hit == "eval" and math.isfinite(obs.ppl) and obs.fingerprint != wanda.fingerprint
    assert list((tmp_path / "cache" / "stats").glob("*.safetensors"))


# ------------------------------------------------------------------------ a fitness that reconstructs (reconstruct.yaml)
@pytest.mark.parametrize("pattern", [Pattern(0.5, "row"), TWO_FOUR])
def test_reconstructing_fitness_equals_a_one_shot_prune_with_update(windows, pattern):
    """A setting with ``update: obs`` prunes the candidate's mask and updates the kept weights from the cached OBS
    factor: the same weights, bit for bit, as ``prune_model(sequential=False, update="obs")``, so the same
    perplexity; the dense weights come back afterwards, and without the update the perplexity differs."""
    from prunerzero.evaluate import perplexity
    from prunerzero.search.fitness import FitnessEvaluator

    model = make_tiny()
    stats = activation_stats(model, windows, progress=False, factor=True)
    assert stats.terms() == {"X", "Hd"} and stats.factor("layers.0.self_attn.q_proj") is not None
    dense = {k: lin.weight.clone() for k, lin in all_prunable(model).items()}
    evalw = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(5))
    ev = FitnessEvaluator(model, stats, [pattern, pattern], evalw, name="tiny", updates=["obs", "none"])
    res = ev(str(WANDA))
    label = f"tiny|{pattern.slug}"
    assert set(res.ppls) == {label + "+obs", label}
    assert all(torch.equal(lin.weight, dense[k]) for k, lin in all_prunable(model).items())

    ref = make_tiny()
    prune_model(ref, WANDA, pattern, windows, sequential=False, progress=False, update="obs")
    assert res.ppls[label + "+obs"] == perplexity(ref, evalw)
    masked = make_tiny()
    prune_model(masked, WANDA, pattern, windows, sequential=False, progress=False)
    assert res.ppls[label] == perplexity(masked, evalw) != res.ppls[label + "+obs"]
    # the two parts share the mask, not the perplexity: the mask cache is per part
    assert res.parts[label] == res.parts[label + "+obs"]


@pytest.mark.parametrize("update", ["lsq", "admm"])
@pytest.mark.parametrize("pattern", [Pattern(0.5, "row"), TWO_FOUR])
def test_solving_fitness_equals_a_one_shot_prune_with_update(windows, pattern, update):
    """A setting with ``update: lsq`` (exact least-squares weights for the mask) or ``update: admm`` (ADMM, the
    formula re-selecting the mask on the updated weights) gives the perplexity of ``prune_model(sequential=False,
    update=...)`` from the layer Hessians cached in the statistics; the dense weights come back afterwards. An ADMM
    part's fingerprint is of its final masks (here not the metric's mask on the dense weights), and a repeat of
    those masks is answered by the mask cache."""
    from prunerzero.evaluate import perplexity
    from prunerzero.search.fitness import FitnessEvaluator

    model = make_tiny()
    stats = activation_stats(model, windows, progress=False, keep_hessian=True)
    assert stats.terms() == {"X", "Hd"} and stats.hessian("layers.0.self_attn.q_proj").shape == (64, 64)
    dense = {k: lin.weight.clone() for k, lin in all_prunable(model).items()}
    evalw = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(5))
    ev = FitnessEvaluator(model, stats, [pattern, pattern], evalw, name="tiny", updates=[update, "none"])
    res = ev(str(WANDA))
    label = f"tiny|{pattern.slug}"
    assert set(res.ppls) == {f"{label}+{update}", label} and res.hit == "eval"
    assert all(torch.equal(lin.weight, dense[k]) for k, lin in all_prunable(model).items())

    ref = make_tiny()
    prune_model(ref, WANDA, pattern, windows, sequential=False, progress=False, update=update)
    assert res.ppls[f"{label}+{update}"] == pytest.approx(perplexity(ref, evalw), rel=1e-5)
    masked = make_tiny()
    prune_model(masked, WANDA, pattern, windows, sequential=False, progress=False)
    assert res.ppls[label] == perplexity(masked, evalw) != res.ppls[f"{label}+{update}"]
    assert (res.parts[label] == res.parts[f"{label}+{update}"]) == (update == "lsq")
    # the same formula again: every part from the mask cache, the weights dense again
    again = ev("mul(sqrt(X), abs(W))")
    assert again.hit == "mask" and again.ppls == res.ppls
    assert all(torch.equal(lin.weight, dense[k]) for k, lin in all_prunable(model).items())


def test_solving_fitness_needs_the_hessians_in_the_statistics(windows):
    from prunerzero.search.fitness import FitnessEvaluator

    model = make_tiny()
    dense = {k: lin.weight.clone() for k, lin in all_prunable(model).items()}
    ev = FitnessEvaluator(model, activation_stats(model, windows, progress=False), Pattern(0.5, "row"),
                          windows[:1], updates=["admm"])
    res = ev(str(WANDA))
    assert res.hit == "error" and "lack the layer Hessian" in res.error
    assert all(torch.equal(lin.weight, dense[k]) for k, lin in all_prunable(model).items())


def test_obs_factor_round_trips_through_the_statistics_file(windows, tmp_path):
    from prunerzero.calibration import Stats

    stats = activation_stats(make_tiny(), windows, progress=False, factor=True)
    stats.save(tmp_path / "s.safetensors")
    back = Stats.load(tmp_path / "s.safetensors")
    for key in stats.tensors:
        U, dead = back.factor(key)
        assert torch.equal(U, stats.factor(key)[0]) and dead.dtype == torch.bool
    assert "_U" not in back.env("layers.0.mlp.down_proj", all_prunable(make_tiny())["layers.0.mlp.down_proj"].weight)
    assert activation_stats(make_tiny(), windows, progress=False).factor("layers.0.mlp.down_proj") is None


def test_reconstruct_space_and_update_setting_validation():
    from prunerzero.search.space import load_space, setting_slug, validate

    space = load_space("reconstruct")
    assert [setting_slug(s) for s in space.fitness["settings"]] == ["u0.5-row+obs", "2of4+obs"]
    assert "Hd" in space.raw["terminals"] and "mul(sqr(W), Hd)" in space.seeds
    both = validate({"fitness": {"settings": [{"sparsity": 0.5}, {"sparsity": 0.5, "update": "obs"}]}})
    assert [s.get("update", "none") for s in both.fitness["settings"]] == ["none", "obs"]
    # "none" is the default and is not recorded, so earlier runs' settings (and their resume checks) are unchanged
    assert "update" not in validate({"fitness": {"settings": [{"sparsity": 0.5, "update": "none"}]}}).fitness[
        "settings"][0]
    with pytest.raises(UserError, match=r"fitness.settings\[0\].update must be none, obs .* lsq .* or admm"):
        validate({"fitness": {"settings": [{"sparsity": 0.5, "update": "lbfgs"}]}})
    with pytest.raises(UserError, match="repeats the setting"):
        validate({"fitness": {"settings": [{"sparsity": 0.5, "update": "obs"}, {"sparsity": 0.5, "update": "obs"}]}})


@pytest.mark.parametrize("setting, part, stored", [({"pattern": "2:4", "update": "obs"}, "2of4+obs", "_U"),
                                                   ({"sparsity": 0.5, "update": "admm"}, "u0.5-row+admm", "_H")])
def test_search_with_an_updating_setting_end_to_end(tiny_model_dir, tmp_path, setting, part, stored):
    """The CLI search on a space whose setting updates the kept weights (OBS after the mask; ADMM with the formula
    re-selecting it): the statistics file holds what the update needs (the OBS factor; the layer Hessians), every
    record has the +obs / +admm part, and the reference (Wanda's metric with the same update) scores 0."""
    import json

    import yaml
    from safetensors import safe_open

    from prunerzero.cli import main
    from prunerzero.search.engine import read_evaluations

    raw = yaml.safe_load(open("search_spaces/tiny.yaml"))
    raw["fitness"] = {"model": str(tiny_model_dir), "settings": [setting],
                      "reference": "wanda", "eval_windows": 1, "seqlen": 64, "nsamples": 2, "device": "cpu"}
    raw["gp"].update(population=4, generations=1)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["search", "--space", str(path), "--out", str(tmp_path / "run"), "--quiet",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    recs = [r for r in read_evaluations(tmp_path / "run") if r["hit"] != "error"]
    assert recs and all(list(r["ppls"]) == [f"{tiny_model_dir}|{part}"] for r in recs)
    assert [r["score"] for r in recs if r["formula"] == "mul(abs(W), sqrt(X))"][0] == 0.0
    refs = json.loads((tmp_path / "run" / "references.json").read_text())
    assert list(refs["levels"]["0"]["ppls"]) == [f"{tiny_model_dir}|{part}"]
    keys = set()
    for file in (tmp_path / "cache" / "stats").glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            keys |= set(f.keys())
    assert f"layers.0.mlp.down_proj/{stored}" in keys
