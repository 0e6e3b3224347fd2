"""Hugging Face interop: an export opens in transformers with our logits, comes back bit-identical,
carries the run's tokenizer; unsupported HF configs are refused by name; --init-from-hf trains from
an export; TransformerLens sees the same induction scores as evals/."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import ROOT, env, run_train

from grokcopy.evals.copying import make_repeat_batch, repeat_metrics
from grokcopy.evals.targets import second_copy_targets
from grokcopy.model import PRESETS, Llama, LlamaConfig, from_hf
from grokcopy.model.hf import export_hf, model_shape_from_hf, to_hf_config
from grokcopy.model.run_dir import RunDir

transformers = pytest.importorskip("transformers", reason="needs the hf extra: pip install -e '.[hf]'")
pytest.importorskip("safetensors", reason="needs the hf extra: pip install -e '.[hf]'")

GQA = LlamaConfig(vocab_size=257, n_layers=2, n_heads=4, n_kv_heads=2, d_model=64, d_mlp=96, context=64,
                  rope_theta=5000.0, norm_eps=1e-5, tie_embeddings=True)
TINY = PRESETS["tiny"].model
BIASED = LlamaConfig(vocab_size=257, n_layers=2, n_heads=4, n_kv_heads=2, d_model=64, d_mlp=96, context=64,
                     attention_bias=True)
# NoPE layers (nope_every): exported as HF's SmolLM3, Llama with some layers not rotating q and k
NOPE = LlamaConfig(vocab_size=257, n_layers=4, n_heads=4, n_kv_heads=2, d_model=64, d_mlp=96, context=64,
                   nope_every=2)
BYTES_META = {"tokenizer": {"kind": "bytes", "file": None, "eot_id": 256}, "vocab_size": 257}


def random_model(cfg: LlamaConfig) -> Llama:
    """A Llama whose norm weights and biases are random too, so swapping two cannot go unnoticed."""
    model = Llama(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn_like(p))
    return model.eval()


def make_run(run_dir: Path, model: Llama, data_dir: Path | None = None, data_meta: dict = BYTES_META) -> Path:
    """A run directory as train.py leaves it, as far as export reads it: a checkpoint and config.json."""
    RunDir(run_dir).save_checkpoint({"model": model.state_dict(), "model_config": model.cfg.to_dict(), "step": 7},
                                    7, keep=1)
    (run_dir / "config.json").write_text(json.dumps({"data_dir": str(data_dir), "data_meta": data_meta}))
    return run_dir


@pytest.fixture(scope="module")
def bpe_corpus(tmp_path_factory):
    """A corpus with a small trained BPE (300 tokens): its tokenizer.json is what export must carry."""
    import sysconfig

    from grokcopy.data.prepare import collect_sources, prepare

    out = tmp_path_factory.mktemp("bpe") / "corpus"
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    meta = prepare(collect_sources([stdlib / "textwrap.py", stdlib / "shlex.py"]), out, bpe_vocab_size=300,
                   val_fraction=0.5, progress=False)
    return out, meta


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / ours.abs().max())


@pytest.mark.parametrize("cfg", [GQA, TINY, BIASED, NOPE], ids=["gqa-tied", "tiny", "gqa-attention-bias", "nope"])
def test_export_loads_in_transformers_with_our_logits_and_round_trips(cfg, tmp_path, bpe_corpus):
    model = random_model(cfg)
    corpus_dir, meta = bpe_corpus
    out = export_hf(make_run(tmp_path / "run", model, corpus_dir, meta), tmp_path / "hf")
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()}

    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == ("SmolLM3ForCausalLM" if cfg.nope_every else "LlamaForCausalLM")
    assert hf.dtype == torch.float32
    assert hf.config.num_key_value_heads == cfg.kv_heads and hf.config.tie_word_embeddings == cfg.tie_embeddings
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.context))
    with torch.no_grad():
        assert relative_error(model(tokens), hf(tokens).logits) <= 1e-5

    back, back_cfg = from_hf(out)
    # the op backends (tiny picks attention="torch") say how this process runs the model; an HF
    # checkpoint does not carry them, so the round trip comes back with "auto"
    assert back_cfg == dataclasses.replace(cfg, attention="auto", norm="auto", mlp="auto")
    for (name, ours), theirs in zip(model.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs), name


def test_bf16_export_holds_the_rounded_weights(tmp_path):
    model = random_model(GQA)
    out = export_hf(make_run(tmp_path / "run", model), tmp_path / "hf", dtype="bf16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    back, _ = from_hf(out)
    for (name, ours), theirs in zip(model.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(ours.bfloat16().float(), theirs), name


def test_sharded_checkpoints_load(tmp_path):
    model = random_model(GQA)
    exported = export_hf(make_run(tmp_path / "run", model), tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(exported)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    back, _ = from_hf(tmp_path / "sharded")
    for (name, ours), theirs in zip(model.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs), name


def test_exported_tokenizers(tmp_path, bpe_corpus):
    text = "def f(x):\n    return 'héllo' + x\n"
    byte_run = export_hf(make_run(tmp_path / "bytes", random_model(GQA)), tmp_path / "bytes-hf")
    tok = transformers.AutoTokenizer.from_pretrained(byte_run)
    assert tok(text)["input_ids"] == list(text.encode("utf-8"))  # bytes runs: the id is the byte
    assert tok.eos_token_id == 256 and tok.decode([*text.encode("utf-8"), 256]) == text + "<|endoftext|>"

    from tokenizers import Tokenizer

    corpus_dir, meta = bpe_corpus
    bpe_run = export_hf(make_run(tmp_path / "bpe", random_model(GQA), corpus_dir, meta), tmp_path / "bpe-hf")
    tok = transformers.AutoTokenizer.from_pretrained(bpe_run)
    ours = Tokenizer.from_file(str(corpus_dir / "tokenizer.json"))
    assert tok(text)["input_ids"] == ours.encode(text, add_special_tokens=False).ids
    assert tok.eos_token_id == meta["tokenizer"]["eot_id"] == json.loads((bpe_run / "config.json").read_text())[
        "eos_token_id"]


GOOD = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)


@pytest.mark.parametrize("bad, field", [
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}), "rope_parameters"),
    (dict(head_dim=16), "head_dim"),
])
def test_unsupported_hf_configs_are_refused_by_name(tmp_path, bad, field):
    transformers.LlamaConfig(**GOOD, **bad).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=field):
        from_hf(tmp_path)


def test_nope_every_beyond_the_last_layer_exports_a_llama():
    """tiny's nope_every = 3 on 2 layers leaves RoPE in both: that model is a plain Llama."""
    cfg = dataclasses.replace(NOPE, n_layers=2, nope_every=3)
    assert type(transformers.AutoModelForCausalLM.from_config(to_hf_config(cfg))).__name__ == "LlamaForCausalLM"


def test_smollm3_configs_load_only_with_every_nth_layer_nope():
    base = {"model_type": "smollm3", **GOOD, "num_hidden_layers": 4}
    assert model_shape_from_hf({**base, "no_rope_layers": [1, 0, 1, 0]})["nope_every"] == 2
    assert model_shape_from_hf({**base, "no_rope_layers": [1, 1, 1, 1]})["nope_every"] == 0
    with pytest.raises(ValueError, match="no_rope_layers"):
        model_shape_from_hf({**base, "no_rope_layers": [0, 1, 1, 1]})
    with pytest.raises(ValueError, match="use_sliding_window"):
        model_shape_from_hf({**base, "no_rope_layers": [1, 1, 1, 1], "use_sliding_window": True})


@pytest.mark.parametrize("bad, field", [
    ({"model_type": "mistral"}, "model_type"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}, "rope_theta": 10000.0}, "rope_scaling"),  # 4.x style
])
def test_unsupported_config_json_fields_are_refused_by_name(bad, field):
    with pytest.raises(ValueError, match=field):
        model_shape_from_hf({"model_type": "llama", **GOOD, **bad})


def test_model_package_imports_without_transformers():
    code = "import sys, model, model.hf, train; sys.exit('transformers' in sys.modules or 'safetensors' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env()).returncode == 0


def test_init_from_hf_trains_from_the_exported_weights(corpus, tmp_path, capsys):
    import train

    cfg = LlamaConfig(vocab_size=257, n_layers=1, n_heads=4, n_kv_heads=2, d_model=32, d_mlp=64, context=64)
    model = random_model(cfg)
    hf_dir = export_hf(make_run(tmp_path / "src", model), tmp_path / "hf")
    # no shape flags: the shape comes from the HF config; a tiny LR keeps the weights near their start
    args = ["--init-from-hf", str(hf_dir), "--data", str(corpus), "--seq-len", "64", "--batch-size", "4",
            "--max-steps", "3", "--lr", "1e-6", "--warmup-steps", "0", "--eval-every", "0", "--quiet",
            "--dtype", "fp32", "--no-tensorboard", "--no-compile"]
    out = tmp_path / "run"
    proc = run_train([*args, "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert "initialised from" in proc.stdout
    # the shape comes from the HF config, the op backend from the preset (tiny: plain-math attention)
    expected = {**cfg.to_dict(), "attention": PRESETS["tiny"].model.attention}
    assert json.loads((out / "config.json").read_text())["model"] == expected
    trained = torch.load(RunDir(out).checkpoints()[-1].path, weights_only=False)  # holds numpy RNG state
    assert trained["step"] == 3
    for name, start in model.state_dict().items():
        torch.testing.assert_close(trained["model"][name], start, atol=1e-5, rtol=0, msg=name)
    # and a real run directory (its checkpoint holds optimizer and RNG state) exports as well
    again, _ = from_hf(export_hf(out, tmp_path / "again"))
    for name, weight in again.state_dict().items():
        assert torch.equal(weight, trained["model"][name]), name

    code = train.main([*args, "--out", str(tmp_path / "other"), "--d-model", "48"])
    err = capsys.readouterr().err
    assert code == 2 and "--d-model 48 contradicts --init-from-hf" in err and "d_model is 32" in err, err


@pytest.mark.parametrize("cfg", [GQA, NOPE], ids=["gqa-tied", "nope"])
def test_transformer_lens_sees_our_induction_scores(cfg, tmp_path):
    pytest.importorskip("transformer_lens", reason="transformer-lens is not installed (pip install -e '.[lens]')")
    from transformer_lens.model_bridge import TransformerBridge

    model = random_model(cfg)
    bridge = TransformerBridge.boot_transformers(str(export_hf(make_run(tmp_path / "run", model), tmp_path / "hf")),
                                                 device="cpu")
    tokens, periods = make_repeat_batch(cfg.vocab_size - 1, cfg.context, n=8)
    ours = torch.tensor(repeat_metrics(model, tokens, periods, "cpu")["induction"])  # [layers, heads]

    with torch.no_grad():
        logits, cache = bridge.run_with_cache(tokens)
        assert relative_error(model(tokens), logits) <= 1e-5
    targets = second_copy_targets(cfg.context, periods)[..., 0]  # [n, T]: the induction key, -1 outside copy 2
    in_second = (targets >= 0).float()
    for layer in range(cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [n, heads, T, T]
        index = targets.clamp(min=0)[:, None, :, None].expand(-1, cfg.n_heads, -1, 1)
        on_target = pattern.gather(-1, index)[..., 0] * in_second[:, None]
        theirs = (on_target.sum(-1) / in_second.sum(-1)[:, None]).mean(0)  # mean over copy 2, then sequences
        torch.testing.assert_close(theirs, ours[layer], atol=1e-6, rtol=1e-5)
