"""Checks on the real SmolLM2-135M (a few short windows, so they stay fast on CPU)."""
import pytest
import torch

from prunerzero import data
from prunerzero.evaluate import perplexity
from prunerzero.models import all_prunable
from prunerzero.pipeline import CalibConfig, prune
from prunerzero.prune.masks import WeightSnapshot, parse_pattern

pytestmark = pytest.mark.real


def test_smollm2_structure(smollm2):
    cfg = smollm2.model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size) == \
        (30, 9, 3, 1536)
    assert len(all_prunable(smollm2.model)) == 30 * 7
    assert smollm2.seqlen == 2048


def test_smollm2_tokens_and_ppl(smollm2):
    tokens = data.eval_tokens(smollm2.tokenizer, "wikitext2", "test")
    assert tokens.numel() == 304_986  # the reference token count: no BOS, same tokenizer
    windows = data.eval_windows(tokens, 256, max_windows=2)
    ppl = perplexity(smollm2.model, windows, batch_size=2)
    assert 10 < ppl < 80


@pytest.mark.parametrize("metric,pattern,seq", [("wanda", None, True), ("magnitude", "2:4", False)])
def test_smollm2_prune_exact_and_restorable(smollm2, metric, pattern, seq):
    lm = smollm2
    linears = all_prunable(lm.model)
    snap = WeightSnapshot(linears, device="cpu")
    try:
        windows = data.eval_windows(data.eval_tokens(lm.tokenizer), 128, max_windows=2)
        dense = perplexity(lm.model, windows)
        res = prune(lm, metric, parse_pattern(0.5, pattern, "row"), CalibConfig(nsamples=2), sequential=seq,
                    progress=False, seqlen=128)
        assert set(res.pruned) == set(linears)
        for key, lin in linears.items():
            # the mask removed exactly half of every row / every group of 4 (the Q4_1 ties are broken, not
            # over-pruned); every weight it kept is untouched
            assert res.pruned[key] == lin.weight.numel() // 2
            kept = lin.weight != 0
            assert torch.equal(lin.weight[kept], snap.saved[key][kept])
            assert int(((lin.weight == 0) & (snap.saved[key] != 0)).sum()) <= res.pruned[key]
            if pattern:
                assert ((lin.weight == 0).view(lin.out_features, -1, 4).sum(-1) >= 2).all()
        assert res.sparsity >= 0.5
        pruned = perplexity(lm.model, windows)
        assert pruned > dense
    finally:
        snap.restore()
    assert all(torch.equal(l.weight, snap.saved[k]) for k, l in linears.items())


def test_cli_search_and_show_agree(tmp_path, capsys, smollm2):
    """A two-generation search on the real model through the CLI; `show` prints the same best formula."""
    from prunerzero.cli import main
    from prunerzero.search.table import equations

    out = tmp_path / "run"
    assert main(["search", "--space", "search_spaces/tiny.yaml", "--generations", "1", "--population", "4",
                 "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    best = equations(out).iloc[0]
    assert best.formula in printed
    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert f"{best.ppl:.3f}" in shown and best.formula in shown
