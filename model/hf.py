"""Hugging Face interop: export a run as a `LlamaForCausalLM` directory (`SmolLM3ForCausalLM` when
some layers attend without RoPE, see LlamaConfig.nope_every), load any HF Llama or SmolLM3.

    python -m grokcopy.model.hf export RUN_DIR_OR_CHECKPOINT OUT_DIR [--dtype fp32|bf16] [--overwrite]

The export holds config.json, model.safetensors and generation_config.json, which
`transformers.AutoModelForCausalLM.from_pretrained(OUT_DIR)` opens as a LlamaForCausalLM (or
SmolLM3ForCausalLM: HF's Llama with NoPE layers, the same weight names), and the
run's tokenizer (tokenizer.json, tokenizer_config.json) for `AutoTokenizer.from_pretrained(OUT_DIR)`.
A raw-bytes run gets a byte tokenizer whose ids are the bytes themselves (0-255; 256 = end of text).

Our Llama already uses HF's conventions (rotate_half RoPE, RMSNorm in fp32 with the weight applied
after casting back, biases only on the attention projections and only with attention_bias), so
the only translation is of names and of the packed weights:
`wqkv` is [q; k; v] rows and `w_gate_up` is [gate; up] rows. The logits agree to fp32 rounding.

transformers and safetensors (the `hf` extra) are imported inside the functions that need them, so
importing this module needs neither.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from grokcopy.cli import UsageError, run_cli
from grokcopy.data.prepare import EOT_TOKEN
from grokcopy.model.config import LlamaConfig
from grokcopy.model.llama import Llama
from grokcopy.model.run_dir import load_checkpoint, resolve_checkpoint
from grokcopy.ownership import (
    EXPORT_MARKER,
    describe_contents,
    is_inside,
    listed,
    output_kind,
    read_marker,
    write_marker,
)

if TYPE_CHECKING:
    import tokenizers
    import transformers

# Per block: our weight -> the HF weights it packs, in row order (one name: a plain rename).
BLOCK_WEIGHTS = {
    "attn_norm.weight": ("input_layernorm.weight",),
    "attn.wqkv.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "attn.wo.weight": ("self_attn.o_proj.weight",),
    "mlp_norm.weight": ("post_attention_layernorm.weight",),
    "mlp.w_gate_up.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
    "mlp.w_down.weight": ("mlp.down_proj.weight",),
}
# With attention_bias (HF's field of the same name), the projections' biases, packed like their weights.
ATTENTION_BIASES = {
    "attn.wqkv.bias": ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
    "attn.wo.bias": ("self_attn.o_proj.bias",),
}
TOP_WEIGHTS = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
               "lm_head.weight": "lm_head.weight"}
# Buffers some older HF checkpoints saved; recomputed from the config, so they are skipped on load.
IGNORED_HF_SUFFIXES = ("rotary_emb.inv_freq",)
# HF LlamaConfig's defaults: a config.json may leave out any field that has its default value.
HF_LLAMA_DEFAULTS = {
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": None, "hidden_act": "silu", "max_position_embeddings": 2048,
    "initializer_range": 0.02, "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "rope_theta": 10000.0,
    "rope_scaling": None, "attention_bias": False, "mlp_bias": False, "head_dim": None,
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _require(module: str):
    """Import a dependency of the `hf` extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{module} is needed for Hugging Face interop: pip install -e '.[hf]'") from None


# ---------------------------------------------------------------------------------------------
# Weights: our packed names <-> HF names


def _packed_rows(cfg: LlamaConfig, name: str) -> list[int]:
    """Rows of each HF tensor packed into our block tensor `name` (wqkv's weight or bias, or
    w_gate_up's weight), in order."""
    q_rows, kv_rows = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    return [q_rows, kv_rows, kv_rows] if name.startswith("attn.wqkv.") else [cfg.d_mlp, cfg.d_mlp]


def block_tensors(cfg: LlamaConfig) -> dict[str, tuple[str, ...]]:
    """Per block: our tensor -> the HF tensors it packs (BLOCK_WEIGHTS, plus the attention biases
    when the model has them)."""
    return {**BLOCK_WEIGHTS, **(ATTENTION_BIASES if cfg.attention_bias else {})}


def to_hf_state_dict(state: dict[str, torch.Tensor], cfg: LlamaConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> LlamaForCausalLM's (views, no copies). lm_head.weight is kept when tied:
    HF ties it to the embedding itself and expects the key."""
    out = {hf: state[ours] for ours, hf in TOP_WEIGHTS.items()}
    for i in range(cfg.n_layers):
        for ours, hf_names in block_tensors(cfg).items():
            weight = state[f"blocks.{i}.{ours}"]
            parts = weight.split(_packed_rows(cfg, ours)) if len(hf_names) > 1 else (weight,)
            out.update({f"model.layers.{i}.{hf}": part for hf, part in zip(hf_names, parts, strict=True)})
    return out


def from_hf_state_dict(hf_state: dict[str, torch.Tensor], cfg: LlamaConfig) -> dict[str, torch.Tensor]:
    """A LlamaForCausalLM state dict -> ours; raises ValueError naming a missing or unexpected weight."""
    hf_state = {k: v for k, v in hf_state.items() if not k.endswith(IGNORED_HF_SUFFIXES)}
    if cfg.tie_embeddings:  # tied checkpoints usually leave lm_head out; if present it is the embedding
        hf_state.pop("lm_head.weight", None)
        hf_state["lm_head.weight"] = hf_state.get("model.embed_tokens.weight")
    used, out = set(), {}

    def take(name: str) -> torch.Tensor:
        if hf_state.get(name) is None:
            raise ValueError(f"the HF checkpoint has no weight {name!r}")
        used.add(name)
        return hf_state[name]

    for ours, hf in TOP_WEIGHTS.items():
        out[ours] = take(hf)
    for i in range(cfg.n_layers):
        for ours, hf_names in block_tensors(cfg).items():
            out[f"blocks.{i}.{ours}"] = torch.cat([take(f"model.layers.{i}.{hf}") for hf in hf_names])
    unexpected = sorted(set(hf_state) - used)
    if unexpected:
        raise ValueError(f"the HF checkpoint has weights grokcopy's Llama does not: {unexpected[:8]}")
    return out


# ---------------------------------------------------------------------------------------------
# Config: LlamaConfig <-> HF LlamaConfig


def no_rope_layers(cfg: LlamaConfig) -> list[int]:
    """SmolLM3's per-layer flags: 1 where the layer uses RoPE, 0 where it is a NoPE layer."""
    return [int(cfg.uses_rope(i)) for i in range(cfg.n_layers)]


def to_hf_config(cfg: LlamaConfig, eos_token_id: int | None = None) -> transformers.PretrainedConfig:
    """The transformers config of the same model (no BOS token: our corpora have none): a
    LlamaConfig, or with NoPE layers (nope_every) a SmolLM3Config, HF's Llama with NoPE layers."""
    transformers = _require("transformers")
    shared = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
        hidden_act="silu", max_position_embeddings=cfg.context,
        initializer_range=cfg.init_std, rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
        rope_theta=cfg.rope_theta, attention_bias=cfg.attention_bias, mlp_bias=False,
        bos_token_id=None, eos_token_id=eos_token_id, pad_token_id=None,
    )
    if cfg.nope_layers:  # none when nope_every > n_layers: then the model is a plain Llama
        return transformers.SmolLM3Config(**shared, no_rope_layers=no_rope_layers(cfg),
                                          no_rope_layer_interval=cfg.nope_every, use_sliding_window=False,
                                          architectures=["SmolLM3ForCausalLM"])
    return transformers.LlamaConfig(**shared, head_dim=cfg.head_dim, architectures=["LlamaForCausalLM"])


def _rope_type_and_theta(hf: dict) -> tuple[str, str | None, float]:
    """(field name, rope type or None, theta) from transformers 5's rope_parameters or 4's
    rope_scaling + rope_theta."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict):
        theta = params.get("rope_theta", hf.get("rope_theta", HF_LLAMA_DEFAULTS["rope_theta"]))
        return "rope_parameters", params.get("rope_type", params.get("type", "default")), float(theta)
    scaling = hf.get("rope_scaling")
    kind = None if scaling is None else scaling.get("rope_type", scaling.get("type"))
    return "rope_scaling", kind, float(hf.get("rope_theta", HF_LLAMA_DEFAULTS["rope_theta"]))


def model_shape_from_hf(hf_config) -> dict:
    """LlamaConfig field values (the model shape) of an HF Llama or SmolLM3 config: a config.json
    dict or a transformers config object. Raises ValueError naming the field for anything we
    cannot run."""
    hf = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
    model_type = hf.get("model_type", "llama")
    if model_type == "smollm3":  # its defaults are not Llama's: let transformers fill them in
        hf = _require("transformers").SmolLM3Config(**hf).to_dict()
    elif model_type != "llama":
        raise ValueError(f"model_type {model_type!r} is not supported: only 'llama' and 'smollm3' checkpoints load")
    hf = {**HF_LLAMA_DEFAULTS, **hf}
    if hf["hidden_act"] not in ("silu", "swish"):  # two names of one function
        raise ValueError(f"hidden_act {hf['hidden_act']!r} is not supported: grokcopy's MLP is SwiGLU (silu)")
    if hf["mlp_bias"]:
        raise ValueError("mlp_bias = true is not supported: grokcopy's MLP has no biases")
    if hf.get("use_sliding_window"):
        raise ValueError("use_sliding_window = true is not supported: grokcopy's attention is full causal")
    rope_field, rope_type, theta = _rope_type_and_theta(hf)
    if rope_type not in (None, "default"):
        raise ValueError(f"{rope_field} of type {rope_type!r} is not supported: grokcopy's RoPE is the "
                         "default (unscaled) one")
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf["head_dim"] is not None and hf["head_dim"] * n_heads != d_model:
        raise ValueError(f"head_dim {hf['head_dim']} is not supported: grokcopy needs head_dim = hidden_size / "
                         f"num_attention_heads = {d_model} / {n_heads}")
    kv_heads = hf["num_key_value_heads"]
    return {
        "vocab_size": hf["vocab_size"], "n_layers": hf["num_hidden_layers"], "n_heads": n_heads,
        "n_kv_heads": None if kv_heads in (None, n_heads) else kv_heads, "d_model": d_model,
        "d_mlp": hf["intermediate_size"], "context": hf["max_position_embeddings"], "rope_theta": theta,
        "norm_eps": hf["rms_norm_eps"], "tie_embeddings": bool(hf["tie_word_embeddings"]),
        "init_std": hf["initializer_range"], "attention_bias": bool(hf["attention_bias"]),
        # a Llama rotates in every layer: a preset's NoPE layers must not leak into its shape
        "nope_every": 0 if model_type == "llama" else _nope_every(hf["no_rope_layers"], hf["num_hidden_layers"]),
    }


def _nope_every(flags: list[int], n_layers: int) -> int:
    """grokcopy's nope_every for SmolLM3's no_rope_layers (1: RoPE, 0: NoPE, per layer); ValueError
    when the NoPE layers are not every Nth one, the only pattern grokcopy's config expresses."""
    flags = [int(bool(f)) for f in flags]
    for every in range(n_layers + 1):
        if flags == no_rope_layers(LlamaConfig(n_layers=n_layers, nope_every=every)):
            return every
    raise ValueError(f"no_rope_layers {flags} is not supported: grokcopy's NoPE layers are every Nth layer "
                     "(nope_every)")


def read_hf_config(path: str | os.PathLike) -> dict:
    """config.json of an HF model directory, as a dict."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: not a Hugging Face model directory (no config.json)")
    return json.loads(config_file.read_text())


def read_hf_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of an HF model directory's safetensors file(s), sharded or not, on the CPU."""
    load_file = _require("safetensors.torch").load_file
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json "
                                "(only safetensors checkpoints are read)")
    state = {}
    for name in files:
        state.update(load_file(path / name))
    return state


def load_hf_weights(model: Llama, path: str | os.PathLike) -> None:
    """Copy an HF Llama directory's weights into `model` (same shape; any float dtype is cast)."""
    model.load_state_dict(from_hf_state_dict(read_hf_weights(path), model.cfg))


def from_hf(path: str | os.PathLike, **overrides) -> tuple[Llama, LlamaConfig]:
    """(model, config) from an HF Llama-architecture directory (config.json + safetensors), in fp32.

    `overrides` set the LlamaConfig fields that are not the shape (attention/norm/mlp backend,
    dropout). Raises ValueError naming the config field for an architecture we cannot run.
    """
    cfg = LlamaConfig(**{**model_shape_from_hf(read_hf_config(path)), **overrides})
    model = Llama(cfg)
    load_hf_weights(model, path)
    return model, cfg


# ---------------------------------------------------------------------------------------------
# Export


def _byte_to_char() -> dict[int, str]:
    """GPT-2's byte -> printable character map, the alphabet of tokenizers' ByteLevel models."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def byte_tokenizer() -> tokenizers.Tokenizer:
    """A tokenizers.Tokenizer for raw-bytes runs: the id of each UTF-8 byte is the byte (0-255),
    <|endoftext|> is 256, and decoding joins the bytes back into text."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {char: byte for byte, char in _byte_to_char().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # no merges: one token per byte
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(EOT_TOKEN, special=True)])
    return tok


def run_tokenizer(run_config: dict) -> tuple[tokenizers.Tokenizer, str] | None:
    """(tokenizers.Tokenizer, end-of-text token string) of a run, from its config.json; None if the
    corpus's tokenizer file is no longer where the run found it."""
    from tokenizers import Tokenizer

    meta = run_config["data_meta"]["tokenizer"]
    if meta["kind"] == "bytes":
        return byte_tokenizer(), EOT_TOKEN
    tokenizer_file = Path(run_config["data_dir"]) / meta["file"]
    if not tokenizer_file.is_file():
        return None
    tok = Tokenizer.from_file(str(tokenizer_file))
    return tok, tok.id_to_token(meta["eot_id"])


def export_hf(source: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "fp32",
              overwrite: bool = False) -> Path:
    """Write a run's newest good checkpoint (or a given checkpoint file, checksum-verified) as an HF
    LlamaForCausalLM directory, with the run's tokenizer when it can be found. Returns out_dir.

    out_dir must be new or empty, or, with `overwrite`, an earlier export: a directory grokcopy
    marked as one (.grokcopy-export, which lists the files the export wrote) holding nothing else.
    A run, a corpus, the source itself or anyone's other files are never replaced, with or without
    `overwrite`, and nothing in them is touched. The replacement is whole, never merged (a stale
    tokenizer.json beside a new model would load the wrong vocabulary): the export is written beside
    out_dir and swapped in, and only then are the old export's listed files deleted."""
    transformers = _require("transformers")
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: choose from {sorted(DTYPES)}")
    out_dir = Path(out_dir)
    _check_export_target(Path(source), out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        _write_export(source, staging, dtype, transformers)
        write_marker(staging, "export", files=sorted(p.name for p in staging.iterdir()), source=str(source))
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            os.rename(out_dir, old)
            os.rename(staging, out_dir)
            _remove_export(old)
        else:
            os.rename(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)  # our own mkdtemp directory, holding only what _write_export wrote
    return out_dir


def _export_files(out_dir: Path) -> set[str]:
    """The names an earlier export in out_dir wrote (its marker's list, and the marker)."""
    listed = read_marker(out_dir, "export").get("files", [])
    return {EXPORT_MARKER, *(name for name in listed if isinstance(name, str) and "/" not in name)}


def _check_export_target(source: Path, out_dir: Path, overwrite: bool) -> None:
    """Raise UsageError unless export may write out_dir (see export_hf). Touches nothing."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} is a file; choose a directory to export to")
    if is_inside(source, out_dir):
        raise UsageError(f"{out_dir} holds the source {source}: an export never replaces its own input; choose "
                         "another directory")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if output_kind(out_dir) != "export":
        raise UsageError(f"{out_dir} is not empty and not an earlier export: it is {describe_contents(out_dir)}; "
                         "export replaces only a directory it wrote itself (with --overwrite), so nothing was "
                         "touched: choose a new or empty directory")
    if not overwrite:
        raise UsageError(f"{out_dir} holds an earlier export; choose a new directory, or pass --overwrite to "
                         "replace it whole")
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in _export_files(out_dir))
    if foreign:
        raise UsageError(f"{out_dir} holds an earlier export and files it did not write ({listed(foreign)}); "
                         "--overwrite replaces only an export's own files: move those away, or choose another "
                         "directory")


def _remove_export(old: Path) -> None:
    """Delete the files an export wrote in `old`, then `old` if that empties it; anything else stays."""
    for name in _export_files(old):
        path = old / name
        if path.is_file() and not path.is_symlink():
            path.unlink()
    left = sorted(p.name for p in old.iterdir())
    if left:
        print(f"warning: left {old} in place: it holds {listed(left)}, which export did not write", file=sys.stderr)
    else:
        old.rmdir()


def _write_export(source: str | os.PathLike, out_dir: Path, dtype: str, transformers) -> None:
    run, _ = resolve_checkpoint(source)
    model, cfg = load_checkpoint(source, warn=lambda message: print(message, file=sys.stderr))
    run_config_file = run.config_path
    run_config = json.loads(run_config_file.read_text()) if run_config_file.is_file() else None
    eos = run_config["data_meta"]["tokenizer"]["eot_id"] if run_config else None

    hf_model = transformers.AutoModelForCausalLM.from_config(to_hf_config(cfg, eos_token_id=eos))
    hf_model.load_state_dict(to_hf_state_dict(model.state_dict(), cfg))
    hf_model.to(DTYPES[dtype]).save_pretrained(out_dir)

    # transformers 5 writes only rope_parameters; 4.x reads rope_theta (and ignores the other)
    config_file = out_dir / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "rope_theta": cfg.rope_theta},
                                      indent=2, sort_keys=True) + "\n")

    tokenizer = run_tokenizer(run_config) if run_config else None
    if tokenizer is None:
        print(f"warning: no tokenizer written (the run's corpus or {run_config_file} is missing); "
              "the model is exported without one", file=sys.stderr)
    else:
        # written by hand rather than by transformers 5, whose tokenizer_class 4.x does not know
        tok, eot = tokenizer
        tok.save(str(out_dir / "tokenizer.json"))
        tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eot,
                            "model_max_length": cfg.context, "clean_up_tokenization_spaces": False}
        (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grokcopy.model.hf", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write a run as a Hugging Face LlamaForCausalLM (or SmolLM3) directory")
    export.add_argument("source", help="a run directory (its latest checkpoint) or a checkpoint file")
    export.add_argument("out_dir", help="the directory to write")
    export.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weight dtype (default fp32)")
    export.add_argument("--overwrite", action="store_true",
                        help="replace an earlier export in out_dir whole (never a run, a corpus, the source, or a "
                             "directory holding files the export did not write)")
    args = parser.parse_args(argv)
    out = export_hf(args.source, args.out_dir, args.dtype, args.overwrite)
    print(f"wrote {out}: load it with transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
