"""The Llama model: parameter count, causality, backends agree, it learns, checkpoints load."""

import pytest
import torch
import torch.nn.functional as F

from grokcopy.kernels.reference import attention_reference, attention_stats_reference
from grokcopy.model import PRESETS, Llama, LlamaConfig, load_checkpoint
from grokcopy.model.backends import resolve

SMALL = dict(vocab_size=97, n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, d_mlp=48, context=64)


def test_paper_162m_parameter_count():
    with torch.device("meta"):
        model = Llama(PRESETS["paper-162m"].model)
    assert abs(model.num_parameters() - 162e6) <= 1e6, model.num_parameters()
    assert not PRESETS["paper-162m"].model.tie_embeddings


def test_presets_are_valid_configs():
    for name, preset in PRESETS.items():
        assert isinstance(preset.model, LlamaConfig), name
        assert preset.train["seq_len"] <= preset.model.context, name


@pytest.mark.parametrize("attention", ["torch", "sdpa"])
def test_causality(attention):
    torch.manual_seed(0)
    model = Llama(LlamaConfig(**SMALL, attention=attention)).eval()
    idx = torch.randint(0, 97, (2, 40))
    changed = idx.clone()
    t = 23
    changed[:, t] = (idx[:, t] + 1) % 97
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=0)
    assert (a[:, t:] - b[:, t:]).abs().amax() > 1e-4, "changing token t must change logits at t and after"


def loss_and_grads(cfg: LlamaConfig, idx: torch.Tensor):
    torch.manual_seed(0)
    model = Llama(cfg).double()
    loss = model.loss(idx[:, :-1], idx[:, 1:])
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("tie", [False, True])
def test_attention_backends_agree(tie):
    idx = torch.randint(0, 97, (2, 33))
    ref_loss, ref_grads = loss_and_grads(LlamaConfig(**SMALL, attention="torch", tie_embeddings=tie), idx)
    loss, grads = loss_and_grads(LlamaConfig(**SMALL, attention="sdpa", tie_embeddings=tie), idx)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=0)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-8, atol=1e-12, msg=name)


def test_attention_reference_matches_materialised_softmax():
    q, k, v = (torch.randn(2, 4, 9, 8, dtype=torch.float64) for _ in range(3))
    out = attention_reference(q, k, v)
    scores = q @ k.transpose(-1, -2) / 8**0.5
    scores = scores.masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(out, scores.softmax(-1) @ v)


def test_attention_stats_reference():
    """lse, entropy and target mass of the torch path against direct computation."""
    q, k, v = (torch.randn(1, 2, 6, 4, dtype=torch.float64) for _ in range(3))
    targets = torch.tensor([[[0, -1], [0, 1], [3, 1], [2, 5], [4, 0], [5, 5]]])  # [1, 6, 2]; 3 at t=2 is future
    _, stats = attention_stats_reference(q, k, v, targets=targets)
    scores = (q @ k.transpose(-1, -2) / 2).masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
    p = scores.softmax(-1)
    torch.testing.assert_close(stats.lse, scores.logsumexp(-1).float(), check_dtype=False)
    ent = -(p * p.clamp_min(1e-300).log()).sum(-1)
    torch.testing.assert_close(stats.entropy.double(), ent)
    assert stats.target_mass[0, :, 0, 1].abs().max() == 0  # -1 target
    assert stats.target_mass[0, :, 2, 0].abs().max() == 0  # key 3 is in query 2's future
    torch.testing.assert_close(stats.target_mass[0, :, 3, 0].double(), p[0, :, 3, 2])
    torch.testing.assert_close(stats.target_mass[0, :, 5, 1].double(), p[0, :, 5, 5])


def test_grouped_kv_heads_match_repeated_heads():
    """GQA with n_kv_heads=2 equals multi-head attention whose k/v heads are repeated."""
    torch.manual_seed(0)
    q = torch.randn(1, 4, 10, 8)
    k, v = torch.randn(1, 2, 10, 8), torch.randn(1, 2, 10, 8)
    out = attention_reference(q, k, v)
    full = attention_reference(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1))
    torch.testing.assert_close(out, full)


def test_attention_bias_sits_on_the_attention_projections_and_starts_at_zero():
    """attention_bias (HF's field): q, k, v and output biases, zero at init as in HF; off by default."""
    model = Llama(LlamaConfig(**SMALL, attention_bias=True))
    biases = {name: p for name, p in model.named_parameters() if name.endswith(".bias")}
    assert sorted(biases) == sorted(f"blocks.{i}.attn.{w}.bias" for i in range(2) for w in ("wqkv", "wo"))
    assert all(not p.any() for p in biases.values())
    assert not any(name.endswith(".bias") for name, _ in Llama(LlamaConfig(**SMALL)).named_parameters())


@pytest.mark.parametrize("nope_every, rope_layers", [(0, [True, True, True]), (3, [True, True, False]),
                                                     (2, [True, False, True]), (1, [False, False, False])])
def test_nope_every_names_the_layers_without_rope(nope_every, rope_layers):
    cfg = LlamaConfig(**{**SMALL, "n_layers": 3}, nope_every=nope_every)
    assert [block.attn.rope for block in Llama(cfg).blocks] == rope_layers


@pytest.mark.parametrize("nope_every", [0, 1])
def test_a_nope_layer_sees_no_position(nope_every):
    """One layer: the last query attends over keys and values made from each token alone, so
    without RoPE shuffling the tokens before it cannot change its logits; with RoPE it must."""
    torch.manual_seed(0)
    # a large init, so that attention is far from uniform and position shows when it is seen
    model = Llama(LlamaConfig(**{**SMALL, "n_layers": 1}, nope_every=nope_every, init_std=0.3)).eval()
    idx = torch.randint(0, 97, (2, 40))
    shuffled = torch.cat([idx[:, :-1][:, torch.randperm(39)], idx[:, -1:]], dim=1)
    with torch.no_grad():
        change = (model(idx)[:, -1] - model(shuffled)[:, -1]).abs().amax().item()
    assert change < 1e-4 if nope_every else change > 0.1, change


def test_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    model = Llama(LlamaConfig(**SMALL))
    idx = torch.randint(0, 97, (4, 33))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = model.loss(idx[:, :-1], idx[:, 1:])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first, (first, loss.item())


def test_dropout_only_in_training():
    model = Llama(LlamaConfig(**SMALL, dropout=0.5))
    idx = torch.randint(0, 97, (2, 16))
    model.eval()
    torch.testing.assert_close(model(idx), model(idx))
    model.train()
    assert not torch.equal(model(idx), model(idx))


def test_sequence_longer_than_context_is_an_error():
    with pytest.raises(ValueError, match="longer than the model's context"):
        Llama(LlamaConfig(**SMALL))(torch.zeros(1, 65, dtype=torch.long))


@pytest.mark.parametrize(
    "field, value, message",
    [("attention", "nope", "unknown attention backend"), ("n_heads", 5, "divisible by n_heads"),
     ("n_kv_heads", 3, "multiple of n_kv_heads"), ("dropout", 1.5, "dropout must be"),
     ("nope_every", -1, "nope_every must be")],
)
def test_bad_model_config(field, value, message):
    with pytest.raises(ValueError, match=message):
        LlamaConfig(**{**SMALL, field: value})


def test_backend_resolution():
    assert resolve("attention", "auto", "cpu") == "sdpa"
    assert resolve("norm", "auto", "cpu") == "torch"
    with pytest.raises(ValueError, match="flash_attn"):
        resolve("attention", "flash_attn", "cpu")


def test_load_checkpoint_from_file_and_run_dir(tmp_path):
    from grokcopy.model.run_dir import RunDir

    cfg = LlamaConfig(**SMALL)
    model = Llama(cfg)
    run = RunDir(tmp_path)
    for step in (5, 10):
        run.save_checkpoint({"model": model.state_dict(), "model_config": cfg.to_dict(), "step": step}, step, keep=3)
    loaded, loaded_cfg = load_checkpoint(tmp_path)
    assert loaded_cfg == cfg
    idx = torch.randint(0, 97, (1, 8))
    torch.testing.assert_close(loaded(idx), model(idx))
    assert load_checkpoint(run.checkpoint_path(5))[1] == cfg
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        load_checkpoint(tmp_path / "checkpoints")


def test_logits_are_fp32_cross_entropy_ready():
    model = Llama(LlamaConfig(**SMALL))
    idx = torch.randint(0, 97, (2, 8))
    assert model(idx).dtype == torch.float32
    torch.testing.assert_close(model.loss(idx[:, :-1], idx[:, 1:]),
                               F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten()))


@pytest.mark.parametrize("ops", [dict(norm="triton", mlp="triton"), dict(attention="triton")])
def test_triton_backends_match_torch(ops):
    """The Llama with Triton kernels (under the interpreter on CPU) matches the torch path in
    loss and every gradient, in fp32."""
    from grokcopy.model.backends import available

    for op in ops:
        if not available(op, "triton"):
            pytest.skip(f"the Triton {op} kernel is not in kernels/ yet")
    device = "cuda" if torch.cuda.is_available() else "cpu"  # a GPU machine compiles the kernels
    idx = torch.randint(0, 97, (2, 21), device=device)
    cfg = dict(SMALL, d_model=64, n_heads=2, n_kv_heads=1, context=32)  # head_dim 32, grouped KV

    def run(**backend):
        torch.manual_seed(0)
        model = Llama(LlamaConfig(**cfg, **backend)).to(device)
        loss = model.loss(idx[:, :-1], idx[:, 1:])
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters()}

    ref_loss, ref_grads = run(attention="torch")
    loss, grads = run(**{"attention": "torch", **ops})
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------
# The loss and RoPE backends: the fused linear cross-entropy and the rotary kernel against the torch
# path, with a NoPE layer (nope_every=2: layer 1) and grouped KV heads (SMALL: 4 query, 2 KV heads).

NOPE_GQA = dict(SMALL, nope_every=2)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def loss_and_grads_on(cfg: LlamaConfig, idx: torch.Tensor, autocast: bool, rope: str | None = None):
    """(loss, {name: grad}) of a fresh seed-0 model; `rope` overrides the RoPE backend of each block."""
    from grokcopy.model.llama import OpBackend

    torch.manual_seed(0)
    model = Llama(cfg)
    if rope:
        for block in model.blocks:
            block.attn.rope_backend = OpBackend("rope", rope)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model.loss(idx[:, :-1], idx[:, 1:])
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_triton_loss_matches_torch(autocast, tie):
    idx = torch.randint(0, 97, (2, 21))
    ref_loss, ref_grads = loss_and_grads_on(LlamaConfig(**NOPE_GQA, tie_embeddings=tie, loss="torch"), idx, autocast)
    loss, grads = loss_and_grads_on(LlamaConfig(**NOPE_GQA, tie_embeddings=tie, loss="triton"), idx, autocast)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5 if not autocast else 1e-4, atol=0)
    for name, grad in ref_grads.items():
        assert rel_err(grads[name], grad) <= (1e-5 if not autocast else 1e-2), name


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_triton_rope_matches_torch_with_a_nope_layer_and_grouped_kv(autocast, monkeypatch):
    from grokcopy.model import backends

    idx = torch.randint(0, 97, (2, 21))
    ref_loss, ref_grads = loss_and_grads_on(LlamaConfig(**NOPE_GQA, attention="torch"), idx, autocast)
    calls = []
    rope = backends.rope
    monkeypatch.setattr(backends, "rope", lambda *args: calls.append(args[-1]) or rope(*args))
    loss, grads = loss_and_grads_on(LlamaConfig(**NOPE_GQA, attention="torch"), idx, autocast, rope="triton")
    assert calls == ["triton"]  # layer 0 rotates, layer 1 is the NoPE layer
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6 if not autocast else 1e-3, atol=0)
    for name, grad in ref_grads.items():
        # bf16: the kernel rounds once where the reference rounds each product, ~1 ulp apart
        assert rel_err(grads[name], grad) <= (1e-6 if not autocast else 1e-2), name


def test_the_torch_loss_is_the_cross_entropy_of_the_logits_bit_for_bit():
    """The CPU default (loss auto -> torch) keeps the bits train.py had when it computed
    F.cross_entropy(logits.float()) outside the model, under bf16 autocast and in backward."""
    idx = torch.randint(0, 97, (2, 17))
    results = []
    for through_forward in (True, False):
        torch.manual_seed(0)
        model = Llama(LlamaConfig(**NOPE_GQA))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if through_forward:
                loss = model(idx[:, :-1], targets=idx[:, 1:])
            else:
                loss = F.cross_entropy(model(idx[:, :-1]).float().flatten(0, 1), idx[:, 1:].flatten())
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))


def test_the_loss_comes_with_attention_stats():
    """The train_stats path: forward with targets and attention_targets gives (loss, stats)."""
    from grokcopy.evals.targets import induction_targets

    torch.manual_seed(0)
    model = Llama(LlamaConfig(**NOPE_GQA, attention="torch", loss="triton")).eval()
    idx = torch.randint(0, 97, (2, 17))
    targets = induction_targets(idx[:, :-1])
    with torch.no_grad():
        loss, stats = model(idx[:, :-1], attention_targets=targets, targets=idx[:, 1:])
        logits, ref_stats = model(idx[:, :-1], attention_targets=targets)
    ref = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=0)
    assert len(stats) == 2
    assert all(torch.equal(a.target_mass, b.target_mass) for a, b in zip(stats, ref_stats, strict=True))


def test_the_triton_loss_and_rope_trace_whole():
    """The model with the fused loss and the rotary kernel compiles as one graph (aot_eager runs the
    traced forward and backward under the interpreter) and gives eager's loss and gradients."""
    from grokcopy.model.llama import OpBackend

    torch._dynamo.reset()
    idx = torch.randint(0, 97, (2, 13))
    runs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = Llama(LlamaConfig(**NOPE_GQA, attention="torch", loss="triton"))
        for block in model.blocks:
            block.attn.rope_backend = OpBackend("rope", "triton")
        fn = torch.compile(model, fullgraph=True, backend="aot_eager") if compiled else model
        loss = fn(idx[:, :-1], targets=idx[:, 1:])
        loss.backward()
        runs.append((loss.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=1e-6, atol=0)
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_loss_and_rope_backend_resolution():
    assert resolve("loss", "auto", "cpu") == "torch" and resolve("rope", "auto", "cpu") == "torch"
    assert resolve("loss", "triton", "cpu") == "triton"
    # RoPE follows the attention: its kernel with Triton attention, the reference with the others
    assert resolve("rope", "triton", "cpu") == "triton"
    assert [resolve("rope", a, "cuda") for a in ("torch", "sdpa", "flash_attn")] == ["torch"] * 3
    with pytest.raises(ValueError, match="unknown loss backend"):
        LlamaConfig(**SMALL, loss="fused")
