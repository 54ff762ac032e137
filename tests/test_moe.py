"""Mixtures of experts on tiny random configs of every family in the adapter table (fp32, 3 layers, 4 experts,
top-2): blocks run one by one reproduce the model; every expert's slice of the fused parameters is a prunable
matrix pruned in place to the exact count; expert statistics come from the tokens the router sends (checked by
hand), with the all-token fallback counted; routers stay untouched; the CLI prunes and saves a checkpoint that
reloads with the same logits."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from prunerzero.calibration import activation_stats, forward_check, gradient_stats
from prunerzero.errors import UserError
from prunerzero.metric import parse
from prunerzero.metric.ops import EXPERT_TERMINALS
from prunerzero.models import all_prunable, check_config
from prunerzero.models.moe import MOE_FAMILIES, expert_slice
from prunerzero.prune.masks import parse_pattern
from prunerzero.prune.run import SPARSEGPT, MoeReport, prune_model

WANDA = parse("mul(abs(W), sqrt(X))")
LAYERS, EXPERTS, TOPK = 3, 4, 2
ARCHS = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "glm4_moe", "gpt_oss"]
TOL = dict(rtol=1e-4, atol=1e-5)


def moe_config(arch: str, vocab: int = 256, ctx: int = 256):
    """A tiny random config of an MoE family: hidden 64, 4 heads, 4 experts of which 2 per token; DeepSeek-V3 and
    GLM-4.5 keep their first layer dense and add one shared expert, Qwen2-MoE a gated shared expert."""
    import transformers

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=ctx,
                  num_experts_per_tok=TOPK, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    grouped = dict(n_routed_experts=EXPERTS, moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1,
                   n_group=1, topk_group=1)
    table = {
        "mixtral": (transformers.MixtralConfig, dict(num_local_experts=EXPERTS)),
        "qwen2_moe": (transformers.Qwen2MoeConfig, dict(num_experts=EXPERTS, moe_intermediate_size=32,
                                                        shared_expert_intermediate_size=64)),
        "qwen3_moe": (transformers.Qwen3MoeConfig, dict(num_experts=EXPERTS, moe_intermediate_size=32,
                                                        head_dim=16)),
        "olmoe": (transformers.OlmoeConfig, dict(num_experts=EXPERTS)),
        "deepseek_v3": (transformers.DeepseekV3Config, dict(**grouped, q_lora_rank=32, kv_lora_rank=16,
                                                            qk_rope_head_dim=8, qk_nope_head_dim=8,
                                                            v_head_dim=16)),
        "glm4_moe": (transformers.Glm4MoeConfig, dict(**grouped, head_dim=16)),
        "gpt_oss": (transformers.GptOssConfig, dict(num_local_experts=EXPERTS, head_dim=16, sliding_window=8,
                                                    rope_parameters={"rope_type": "default",
                                                                     "rope_theta": 10000.0})),
    }
    cls, extra = table[arch]
    return cls(**common, **extra)


def make_moe(arch: str, seed: int = 0, vocab: int = 256, ctx: int = 256):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(moe_config(arch, vocab, ctx), dtype=torch.float32).eval()
    model.config.use_cache = False
    return model


@pytest.fixture(scope="module")
def windows():
    return torch.randint(0, 256, (6, 32), generator=torch.Generator().manual_seed(1))


def _moe_layers(model) -> list[int]:
    return [i for i, b in enumerate(model.model.layers) if hasattr(b.mlp, "experts")]


def test_adapter_table_covers_the_families():
    assert set(ARCHS) == set(MOE_FAMILIES)


@pytest.mark.parametrize("arch", ARCHS)
def test_blocks_one_by_one_reproduce_the_forward(arch, windows):
    model = make_moe(arch)
    check = forward_check(model, windows, batch_size=2)
    for i in range(LAYERS):
        torch.testing.assert_close(check.ours[i], check.real[i], **TOL, msg=f"block {i}")
    torch.testing.assert_close(check.replayed, check.logits, **TOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_expert_is_a_matrix_of_the_fused_parameter(arch):
    """One view per expert and fused matrix, in Linear orientation [out, in], sharing the fused storage."""
    model = make_moe(arch)
    linears = all_prunable(model)
    transposed = MOE_FAMILIES[arch].transposed
    for i in _moe_layers(model):
        experts = model.model.layers[i].mlp.experts
        for e in range(EXPERTS):
            for name in ("gate_up_proj", "down_proj"):
                lin = linears[f"layers.{i}.mlp.experts.{e}.{name}"]
                fused = getattr(experts, name)
                want = fused[e].t() if transposed else fused[e]
                assert lin.weight.shape == want.shape and lin.weight.data_ptr() == want.data_ptr()
                assert expert_slice(lin).expert == e
        assert lin.in_features == (experts.down_proj.shape[1 + (not transposed)])
    routers = [k for k in linears if k.rsplit(".", 1)[-1] in ("gate", "router", "shared_expert_gate")]
    assert routers == []
    shared = MOE_FAMILIES[arch].shared
    if shared:
        assert any(f".mlp.{shared[0]}.down_proj" in k for k in linears)


def _routed_by_hand(model, windows, layer: int):
    """Tokens entering layer ``layer``'s MoE (after its attention and norm), and the router's top-k by hand."""
    block = model.model.layers[layer]
    got = {}
    handle = block.mlp.register_forward_pre_hook(lambda _m, args: got.__setitem__("x", args[0].detach()))
    with torch.no_grad():
        model(windows)
    handle.remove()
    x = got["x"].reshape(-1, got["x"].shape[-1])
    with torch.no_grad():
        top, idx = F.linear(x, block.mlp.gate.weight).softmax(-1).topk(TOPK, dim=-1)
    return x, idx, top


@pytest.mark.parametrize("arch", ["mixtral", "qwen3_moe"])
def test_expert_statistics_come_from_routed_tokens(arch, windows):
    """X of expert e's gate_up_proj and down_proj equals sum x^2 / sequences over the tokens whose top-k holds e
    (computed by hand from the router), and the all-token option and the fallback use every token."""
    model = make_moe(arch)
    stats = activation_stats(model, windows, progress=False, min_tokens=1)
    exp = model.model.layers[1].mlp.experts
    x, idx, top = _routed_by_hand(model, windows, 1)
    if arch == "qwen3_moe" and model.config.norm_topk_prob:
        top = top / top.sum(-1, keepdim=True)
    n = windows.shape[0]
    for e in range(EXPERTS):
        sel = (idx == e).any(-1)
        xs = x[sel]
        gate, up = F.linear(xs, exp.gate_up_proj[e]).chunk(2, dim=-1)
        h = F.silu(gate) * up
        torch.testing.assert_close(stats.tensors[f"layers.1.mlp.experts.{e}.gate_up_proj"]["X"],
                                   (xs ** 2).sum(0) / n, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(stats.tensors[f"layers.1.mlp.experts.{e}.down_proj"]["X"],
                                   (h ** 2).sum(0) / n, rtol=1e-4, atol=1e-6)
    assert "expert_fallback" in stats.meta and stats.meta["expert_fallback"] == {}
    everyone = activation_stats(model, windows, progress=False, routing="all")
    thin = activation_stats(model, windows, progress=False, min_tokens=10 ** 6)  # every expert falls back
    for e in range(EXPERTS):
        key = f"layers.1.mlp.experts.{e}.gate_up_proj"
        torch.testing.assert_close(everyone.tensors[key]["X"], (x ** 2).sum(0) / n, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(thin.tensors[key]["X"], everyone.tensors[key]["X"])
    assert thin.meta["expert_fallback"] == {f"layers.{i}.mlp.experts": list(range(EXPERTS)) for i in range(LAYERS)}


def test_gate_weights_and_output_norms_are_recorded(windows):
    """The routing record of an experts module: token counts and gate sums from the router's top-k (by hand)."""
    from prunerzero.calibration.experts import RoutedInputs

    model = make_moe("mixtral")
    exp = model.model.layers[1].mlp.experts
    x, idx, top = _routed_by_hand(model, windows, 1)
    top = top / top.sum(-1, keepdim=True)  # Mixtral renormalises its top-k
    rec = RoutedInputs(exp)
    with torch.no_grad():
        model(windows)
    rec.remove()
    routed = rec.finish(windows.shape[0])
    for e in range(EXPERTS):
        assert int(routed.tokens[e]) == int((idx == e).any(-1).sum())
        assert float(routed.gate[e]) == pytest.approx(float((top * (idx == e)).sum()), rel=1e-5)
    assert int(routed.tokens.sum()) == TOPK * x.shape[0] == TOPK * routed.total_tokens
    assert (routed.reap > 0).all() and (routed.reap < routed.out_norm).all()  # gates are < 1


def _router_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()
            if n.rsplit(".", 2)[-2] in ("gate", "router", "shared_expert_gate")}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method,pattern", [("wanda", "0.5"), ("wanda", "2:4"), (SPARSEGPT, "0.5")])
def test_every_expert_is_pruned_exactly(arch, method, pattern, windows):
    model = make_moe(arch)
    pat = parse_pattern(0.5) if pattern == "0.5" else parse_pattern(pattern=pattern)
    routers = _router_state(model)
    assert routers
    report = MoeReport()
    prune_model(model, WANDA if method == "wanda" else SPARSEGPT, pat, windows, sequential=True, progress=False,
                moe=report)
    linears = all_prunable(model)
    for key, lin in linears.items():
        assert int((lin.weight == 0).sum()) == lin.weight.numel() // 2, key
        if pattern == "2:4":  # N:M along the input dimension of every expert, whatever its storage orientation
            assert ((lin.weight == 0).view(lin.out_features, -1, 4).sum(-1) == 2).all(), key
    for i in _moe_layers(model):
        for name in ("gate_up_proj", "down_proj"):
            fused = getattr(model.model.layers[i].mlp.experts, name)
            assert int((fused == 0).sum()) == fused.numel() // 2  # in place, in the fused parameter
    for n, p in model.named_parameters():
        if n in routers:
            assert torch.equal(p, routers[n]), n
    assert report.experts == EXPERTS * len(_moe_layers(model))
    assert report.matrices == 2 * report.experts and report.routing == "routed"
    assert set(report.tokens) == {f"layers.{i}.mlp.experts" for i in _moe_layers(model)}
    assert report.fallbacks == sum(len(v) for v in report.fallback.values())


@pytest.mark.parametrize("update", ["obs", "admm"])
def test_weight_updates_run_per_expert(update, windows):
    """OBS and ADMM reconstruct every expert against its own routed Hessian: exact counts, and the kept weights
    moved (a mask alone would leave them as they were)."""
    model, dense = make_moe("qwen3_moe"), make_moe("qwen3_moe")
    prune_model(model, WANDA, parse_pattern(0.5), windows, sequential=True, progress=False, update=update)
    before = all_prunable(dense)
    for key, lin in all_prunable(model).items():
        kept = lin.weight != 0
        assert int((~kept).sum()) == lin.weight.numel() // 2, key
        if ".experts." in key:
            assert not torch.equal(lin.weight[kept], before[key].weight[kept]), key


def test_owl_allocates_per_expert(windows):
    """OWL spreads the sparsity over blocks from the dense routed X of every expert; each expert meets its own
    allocated count and the total is the target's."""
    from prunerzero.prune.allocation import Allocation, allocate

    model = make_moe("mixtral")
    stats = activation_stats(model, windows, progress=False)
    pattern = parse_pattern(0.5)
    counts = allocate(model, Allocation("owl", lam=0.08, m=5.0), pattern,
                      lambda b, n: stats.tensors[f"layers.{b}.{n}"]["X"])
    assert len({counts[f"layers.{b}.mlp.experts.0.down_proj"] for b in range(LAYERS)}) > 1
    prune_model(model, WANDA, pattern, windows, sequential=False, progress=False, counts=counts)
    linears = all_prunable(model)
    for key, lin in linears.items():
        assert int((lin.weight == 0).sum()) == counts[key] * lin.out_features, key
    total = sum(lin.weight.numel() for lin in linears.values())
    assert sum(int((lin.weight == 0).sum()) for lin in linears.values()) == int(total * 0.5)


def test_thin_experts_take_the_fallback_and_are_counted(windows):
    model = make_moe("mixtral")
    report = MoeReport()
    prune_model(model, SPARSEGPT, parse_pattern(0.5), windows[:1, :8], progress=False, moe=report, min_tokens=5)
    thin = {k: [e for e, t in enumerate(v) if t < 5] for k, v in report.tokens.items()}
    assert report.fallback == {k: v for k, v in thin.items() if v} and report.fallbacks > 0
    assert f"{report.fallbacks} with fewer than 5 took the all-token fallback" in report.line()
    for lin in all_prunable(model).values():
        assert int((lin.weight == 0).sum()) == lin.weight.numel() // 2


def test_expert_gradients_are_slices_of_the_fused_gradient(windows):
    """G1 of an expert view is |100 x dL/dW| of its slice of the fused parameter (one sequence)."""
    model = make_moe("mixtral")
    one = windows[:1]
    stats = gradient_stats(model, one, progress=False)
    model.zero_grad()
    loss = model(input_ids=one, labels=one).loss
    loss.backward()
    fused = model.model.layers[2].mlp.experts.down_proj.grad
    for e in range(EXPERTS):
        g1 = stats.tensors[f"layers.2.mlp.experts.{e}.down_proj"]["G1"]
        torch.testing.assert_close(g1, (fused[e] * 100).abs(), rtol=1e-4, atol=1e-7)
    assert sum(float(stats.tensors[f"layers.2.mlp.experts.{e}.down_proj"]["G1"].sum()) > 0
               for e in range(EXPERTS)) >= TOPK


def test_unknown_moe_family_is_refused_in_one_line():
    import transformers

    cfg = transformers.PhimoeConfig(num_local_experts=4)
    with pytest.raises(UserError, match="mixture of experts .*no adapter for: supported MoE families are mixtral"):
        check_config(cfg)
    check_config(moe_config("qwen3_moe"))


@pytest.fixture(scope="module")
def moe_dirs(tmp_path_factory):
    """save_pretrained folders of a tiny Mixtral and a tiny Qwen3-MoE that speak SmolLM2's tokenizer."""
    from transformers import AutoTokenizer

    from prunerzero.models import resolve_model_source

    tok = AutoTokenizer.from_pretrained(resolve_model_source("smollm2"))
    out = {}
    for arch in ("mixtral", "qwen3_moe"):
        model = make_moe(arch, vocab=len(tok), ctx=2048)
        out[arch] = tmp_path_factory.mktemp(arch)
        model.save_pretrained(out[arch])
        tok.save_pretrained(out[arch])
    return out


@pytest.mark.parametrize("arch", ["mixtral", "qwen3_moe"])
@pytest.mark.parametrize("args", [["--metric", "wanda", "--sparsity", "0.5", "--sequential"],
                                  ["--metric", "wanda", "--pattern", "2:4"],
                                  ["--metric", "sparsegpt"]])
def test_cli_prunes_experts_and_the_folder_reloads(arch, args, moe_dirs, tmp_path, capsys, monkeypatch):
    from transformers import AutoModelForCausalLM

    import prunerzero.cli.prune as cli
    from prunerzero.cli import main

    saved = {}
    save = cli.save_model
    monkeypatch.setattr(cli, "save_model", lambda lm, target: (saved.setdefault("model", lm.model), save(lm, target)))
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(moe_dirs[arch]), *args, "--nsamples", "2", "--seqlen", "32",
                 "--eval-windows", "1", "--skip-dense", "--save", str(out), "--json", str(tmp_path / "r.json"),
                 "--quiet", "--cache-dir", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr().out
    assert f"experts: {EXPERTS * LAYERS} pruned in place ({2 * EXPERTS * LAYERS} expert matrices)" in printed
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["moe"]["experts"] == EXPERTS * LAYERS and res["sparsity"] == 0.5
    assert res["moe"]["fallbacks"] == sum(len(v) for v in res["moe"]["fallback"].values())
    pruned = saved["model"]  # the model the command pruned, in memory
    stock = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    for lin in all_prunable(stock).values():
        assert int((lin.weight == 0).sum()) == lin.weight.numel() // 2
    ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(stock(ids).logits, pruned(ids).logits, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ expert pruning
def _mask_dropped(model, keep):
    """Hooks that make the original model's routers never choose a dropped expert (their logits -inf), the
    in-memory reference for a Mixtral with those experts removed (its top-k weights are renormalised, so the
    softmax over the kept experts gives the same weights)."""
    handles = []
    for i, kept in keep.items():
        gate = model.model.layers[i].mlp.gate
        dropped = [e for e in range(EXPERTS) if e not in kept]

        def hook(mod, args, out, dropped=dropped):
            x = args[0].reshape(-1, args[0].shape[-1])
            logits = F.linear(x, mod.weight)
            logits[:, dropped] = float("-inf")
            top, idx = logits.softmax(-1).topk(mod.top_k, dim=-1)
            return logits, top / top.sum(-1, keepdim=True), idx
        handles.append(gate.register_forward_hook(hook))
    return handles


def test_dropped_experts_model_equals_the_original_routed_around_them(windows):
    from prunerzero.prune.experts import prune_experts

    model, original = make_moe("mixtral"), make_moe("mixtral")
    res = prune_experts(model, windows, "frequency", 0.5, progress=False)
    assert res.experts_after == LAYERS * EXPERTS // 2 and all(len(k) == 2 for k in res.keep.values())
    handles = _mask_dropped(original, res.keep)
    with torch.no_grad():
        want = original(windows).logits
        for h in handles:
            h.remove()
        dense = original(windows).logits
        got = model(windows).logits
    torch.testing.assert_close(got, want, **TOL)
    assert (got - dense).abs().max() > 1e-3  # dropping experts changed the model


@pytest.mark.parametrize("arch", ARCHS)
def test_expert_pruned_checkpoint_loads_with_stock_transformers(arch, windows, tmp_path):
    from transformers import AutoModelForCausalLM

    from prunerzero.prune.experts import prune_experts

    model, original = make_moe(arch), make_moe(arch)
    res = prune_experts(model, windows, "reap", 0.5, progress=False)
    model.save_pretrained(tmp_path)
    stock = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    fam = MOE_FAMILIES[arch]
    assert getattr(stock.config, fam.count) == EXPERTS // 2
    for i, kept in res.keep.items():
        mlp, old = stock.model.layers[i].mlp, original.model.layers[i].mlp
        for name in ("gate_up_proj", "down_proj"):
            assert torch.equal(getattr(mlp.experts, name), getattr(old.experts, name)[kept])
        for row in fam.expert_rows:  # router rows sliced, the kept ones untouched
            router, before = getattr(mlp, fam.router), getattr(old, fam.router)
            assert torch.equal(getattr(router, row), getattr(before, row)[kept])
    with torch.no_grad():
        torch.testing.assert_close(stock(windows).logits, model(windows).logits, rtol=0, atol=0)
    assert sum(p.numel() for p in stock.parameters()) == res.params_after < res.params_before


def test_expert_scores_formulas_and_choices():
    from prunerzero.metric.expr import FormulaError
    from prunerzero.prune.experts import choose, expert_score

    assert str(expert_score("mul(freq, onorm)")[1]) == "mul(freq, onorm)"
    for bad, msg in [("mul(W, freq)", "unknown operation or terminal 'W'"), ("__import__(freq)", "unknown"),
                     ("freq(", "unbalanced")]:
        with pytest.raises(FormulaError, match=msg):
            expert_score(bad)
    with pytest.raises(FormulaError, match="unknown operation or terminal 'freq'"):
        parse("mul(abs(W), freq)")  # weight formulas do not see expert terminals
    model = make_moe("mixtral")  # top-2 of 4 experts, 3 layers
    scores = {0: torch.tensor([4., 3, 2, 1]), 1: torch.tensor([1., 1, 9, 9]), 2: torch.tensor([5., 6, 7, 8])}
    assert choose(model, scores, 0.5) == {0: [0, 1], 1: [2, 3], 2: [2, 3]}
    assert choose(model, scores, 0.25) == {0: [0, 1, 2], 1: [1, 2, 3], 2: [1, 2, 3]}  # ties: lower index goes
    assert choose(model, scores, 0.25, "global") == {0: [0, 1, 2], 1: [2, 3], 2: [0, 1, 2, 3]}
    assert choose(model, scores, 0.5, "global", floor=2) == {0: [0, 1], 1: [2, 3], 2: [2, 3]}
    with pytest.raises(UserError, match="fewer than the 2 each token is routed to"):
        choose(model, scores, 0.75)
    with pytest.raises(UserError, match="floor of 3 per layer allows 3"):
        choose(model, scores, 0.5, "global", floor=3)
    grouped = make_moe("deepseek_v3")
    grouped.config.n_group = 2
    assert choose(grouped, {1: torch.tensor([1., 2, 0, 3])}, 0.5) == {1: [1, 3]}  # one from each group of 2


@pytest.fixture(scope="module")
def expert_pruned_dir(moe_dirs, tmp_path_factory):
    from prunerzero.cli import main

    out = tmp_path_factory.mktemp("experts") / "dropped"
    tmp = tmp_path_factory.mktemp("experts-cache")
    assert main(["experts", "--model", str(moe_dirs["qwen3_moe"]), "--drop", "0.5", "--score", "reap",
                 "--nsamples", "2", "--seqlen", "32", "--eval-windows", "1", "--save", str(out),
                 "--json", str(tmp / "r.json"), "--quiet", "--cache-dir", str(tmp)]) == 0
    return out, json.loads((tmp / "r.json").read_text())


def test_cli_drops_experts_then_prunes_inside_the_rest(expert_pruned_dir, tmp_path, capsys):
    """STUN's recipe through the CLI: experts first (a stock checkpoint), then Wanda inside the kept experts."""
    from transformers import AutoModelForCausalLM

    from prunerzero.cli import main

    out, res = expert_pruned_dir
    assert res["experts"]["experts_after"] == LAYERS * EXPERTS // 2 and "ppl" in res["pruned"]["wikitext2"]
    assert AutoModelForCausalLM.from_pretrained(out).config.num_experts == EXPERTS // 2
    final = tmp_path / "stun"
    assert main(["prune", "--model", str(out), "--metric", "wanda", "--sparsity", "0.5", "--nsamples", "2",
                 "--seqlen", "32", "--eval-windows", "1", "--skip-dense", "--save", str(final), "--quiet",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert f"experts: {LAYERS * EXPERTS // 2} pruned in place" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(final)
    assert model.model.layers[0].mlp.experts.gate_up_proj.shape[0] == EXPERTS // 2
    for lin in all_prunable(model).values():
        assert int((lin.weight == 0).sum()) == lin.weight.numel() // 2


@pytest.mark.parametrize("extra,msg", [
    (["--drop", "0.75"], "fewer than the 2 each token is routed to"),
    (["--score", "mul(W, freq)"], "unknown operation or terminal 'W'"),
    (["--scope", "global", "--save", "OUT"], "--scope global leaves layers with different expert counts"),
    (["--floor", "2"], "--floor applies to --scope global"),
])
def test_cli_experts_bad_input_before_loading(extra, msg, moe_dirs, tmp_path, capsys, monkeypatch):
    import prunerzero.cli.experts as cli
    from prunerzero.cli import main

    monkeypatch.setattr(cli, "load", lambda args: pytest.fail("loaded the model"))
    extra = [str(tmp_path / "out") if x == "OUT" else x for x in extra]
    assert main(["experts", "--model", str(moe_dirs["mixtral"]), *extra, "--quiet",
                 "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and msg in err


def test_cli_experts_refuses_a_dense_model(tiny_model_dir, tmp_path, capsys):
    from prunerzero.cli import main

    assert main(["experts", "--model", str(tiny_model_dir), "--quiet", "--cache-dir", str(tmp_path)]) == 2
    assert "is not a mixture of experts" in capsys.readouterr().err


def test_gpu_results_moe_stage_commands_parse(tmp_path):
    """The moe stage of scripts/gpu_results.sh, run with a stand-in Python that prints its arguments: every
    prunerzero command it would run is a valid command line (options and values) of the CLI parser."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from prunerzero.cli import build_parser

    fake = tmp_path / "py"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\n"   # the searched formula the stage reads back: any
                    "print('mul(freq, reap)' if sys.argv[1] == '-c' else 'ARGV ' + json.dumps(sys.argv[1:]))\n")
    fake.chmod(0o755)
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run(["bash", str(root / "scripts" / "gpu_results.sh"), "moe"], capture_output=True, text=True,
                         env={**os.environ, "PY": str(fake), "RES": str(tmp_path / "res")}, check=True)
    calls = [json.loads(line[5:]) for line in run.stdout.splitlines() if line.startswith("ARGV ")]
    commands = [c[2] for c in calls]
    assert commands.count("prune") == 5 and commands.count("experts") == 9 and commands.count("eval") == 1
    assert commands.count("search") == 1 and ["--score", "mul(freq, reap)"] == calls[-3][5:7]
    parser = build_parser()
    for argv in calls:
        assert argv[:2] == ["-m", "prunerzero.cli"]
        args = parser.parse_args(argv[2:])
        if args.command == "experts":
            from prunerzero.prune.experts import expert_score

            expert_score(args.score)


def test_search_fitness_prunes_experts_and_restores_them(windows):
    """The search's fitness (masks from one-shot statistics, OBS reconstruction, perplexity, restore) sees every
    expert: a formula's perplexity differs from the dense one and the fused parameters come back bit for bit."""
    from prunerzero.evaluate import perplexity
    from prunerzero.search.fitness import FitnessEvaluator

    model = make_moe("qwen3_moe")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = activation_stats(model, windows, progress=False, factor=True)
    dense = perplexity(model, windows[:2])
    fitness = FitnessEvaluator(model, stats, [parse_pattern(0.5), parse_pattern(pattern="2:4")], windows[:2],
                               updates=["none", "obs"])
    res = fitness("mul(abs(W), sqrt(X))")
    assert res.hit == "eval" and res.error is None and res.ppl != pytest.approx(dense, rel=1e-6)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    masks = fitness.by_mask  # one entry per part
    assert len(masks) == 2


def test_expert_options_are_refused_on_a_dense_model(tiny_model_dir, tmp_path, capsys):
    from prunerzero.cli import main

    assert main(["prune", "--model", str(tiny_model_dir), "--expert-routing", "all", "--quiet",
                 "--cache-dir", str(tmp_path)]) == 2
    assert "has none: drop them" in capsys.readouterr().err


def test_search_finds_expert_scores_through_the_engine(moe_dirs, tmp_path, capsys):
    """A search space with fitness.target experts: the engine evolves formulas over the expert terminals, each
    scored by the perplexity after dropping half of every layer's experts by it; formulas that keep the same
    experts share one measurement (the mask cache), and REAP is the reference."""
    import yaml

    from prunerzero.cli import main
    from prunerzero.search.engine import read_evaluations

    space = tmp_path / "experts.yaml"
    space.write_text(yaml.safe_dump({
        "name": "tiny-experts", "terminals": ["freq", "gate", "onorm", "reap", "wnorm"],
        "unary": ["sqrt", "log"], "binary": ["add", "mul"], "init": {"min_depth": 1, "max_depth": 2},
        "gp": {"population": 4, "generations": 1, "seed": 0},
        "fitness": {"target": "experts", "drop": [0.5], "eval_windows": 2, "seqlen": 32, "nsamples": 2,
                    "device": "cpu", "dtype": "fp32"},
        "seed_population": ["freq", "wnorm"]}))
    out = tmp_path / "run"
    assert main(["search", "--space", str(space), "--model", str(moe_dirs["mixtral"]), "--out", str(out),
                 "--quiet", "--cache-dir", str(tmp_path / "cache")]) == 0
    recs = read_evaluations(out)
    assert {r["formula"] for r in recs} >= {"freq", "wnorm"} and len(recs) >= 6
    for r in recs:
        assert r.get("error") is None and math.isfinite(r["ppl"]) and r["ppl"] > 1
        assert all(t in EXPERT_TERMINALS for t in parse(r["formula"], EXPERT_TERMINALS).terminals())
    refs = json.loads((out / "references.json").read_text())
    assert refs["formula"] == "reap"
    label = f"{moe_dirs['mixtral']}|drop0.5"
    by_keep = {}
    for r in recs:
        if r["hit"] in ("eval", "mask"):
            by_keep.setdefault(r["parts"][label], set()).add(round(r["ppls"][label], 9))
    assert by_keep and all(len(v) == 1 for v in by_keep.values())  # one keep set, one perplexity


@pytest.mark.parametrize("fitness,msg", [
    ({"target": "experts", "drop": [1.5]}, "fitness.drop"),
    ({"target": "weights", "drop": [0.5]}, "set fitness.target experts"),
    ({"target": "experts", "settings": [{"sparsity": 0.5}]}, "fitness.settings sets weight pruning"),
    ({"target": "experts", "calib_seed": [0, 1]}, "one calibration seed"),
    ({"target": "nothing"}, "fitness.target 'nothing' is unknown"),
])
def test_expert_search_spaces_refuse_what_does_not_apply(fitness, msg):
    from prunerzero.search.space import validate

    with pytest.raises(UserError, match=msg):
        validate({"fitness": fitness})
    with pytest.raises(UserError, match="'W' is not an expert terminal"):
        validate({"terminals": ["W", "freq"], "fitness": {"target": "experts"}})


def test_expert_search_refuses_a_dense_model(tiny_model_dir, tmp_path, capsys):
    from prunerzero.cli import main

    from pathlib import Path

    space = Path(__file__).resolve().parent.parent / "scripts" / "moe_experts_space.yaml"
    assert main(["search", "--space", str(space), "--model", str(tiny_model_dir), "--out", str(tmp_path / "r"),
                 "--quiet", "--cache-dir", str(tmp_path)]) == 2
    assert "fitness.target experts drops routed experts" in capsys.readouterr().err


def test_expert_fitness_answers_errors_and_repeats_from_its_caches(windows):
    """Bad formulas and impossible drops are penalised records, not crashes; a formula keeping the same experts
    as an evaluated one is a mask hit with its perplexity; the model comes back bit for bit."""
    from prunerzero.prune.experts import expert_terms
    from prunerzero.search.experts_fitness import ExpertFitness

    model = make_moe("mixtral")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fitness = ExpertFitness(model, expert_terms(model, windows, progress=False), [0.5], windows[:2], penalty=1e4)
    first = fitness("freq")
    again = fitness("sqrt(freq)")   # the same order of experts: the same ones dropped
    assert first.hit == "eval" and again.hit == "mask" and again.ppl == first.ppl
    assert fitness("mul(W, freq)").hit == "error" and fitness("log(sub(freq, freq))").ppl <= 1e4
    assert ExpertFitness(model, fitness.terms, [0.75], windows[:2])("freq").error.startswith("dropping 3 of 4")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert model.config.num_local_experts == EXPERTS and model.model.layers[0].mlp.experts.num_experts == EXPERTS
