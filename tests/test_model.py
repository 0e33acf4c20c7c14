"""The models: bigram baseline, the lecture's teaching modules vs the production GPT, and GPT itself."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pygpt import ops
from pygpt.train import configure_optimizer
from pygpt.model import (
    GPT,
    BigramLanguageModel,
    CausalSelfAttention,
    GPTConfig,
    MultiHeadAttention,
)

BACKENDS = ("eager", "sdpa")


def tiny_config(**kw) -> GPTConfig:
    base = dict(vocab_size=37, block_size=16, n_layer=2, n_head=4, n_embd=32, dropout=0.0, backend="eager")
    base.update(kw)
    return GPTConfig(**base)


def tiny_gpt(seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny_config(**kw)).eval()


# ----------------------------------------------------------------------------------------------
# Bigram


def test_bigram_forward_and_loss():
    torch.manual_seed(1337)
    V = 65
    m = BigramLanguageModel(V)
    x = torch.randint(V, (64, 64))
    y = torch.randint(V, (64, 64))
    logits, loss = m(x, y)
    assert logits.shape == (64, 64, V)
    assert m(x)[1] is None
    # The lecture's table is N(0, 1): logits of unit variance give an expected loss of
    # about ln(V) + 1/2 (E[logsumexp] = ln(V·e^{1/2})), the lecture's 4.88 vs ln(65) = 4.17.
    assert abs(loss.item() - math.log(V)) < 0.75
    assert abs(loss.item() - (math.log(V) + 0.5)) < 0.2


def test_bigram_generate():
    torch.manual_seed(0)
    m = BigramLanguageModel(11)
    out = m.generate(torch.zeros((3, 1), dtype=torch.long), max_new_tokens=20)
    assert out.shape == (3, 21) and out.dtype == torch.long
    assert int(out.min()) >= 0 and int(out.max()) < 11
    assert torch.equal(out[:, 0], torch.zeros(3, dtype=torch.long))


def test_bigram_bad_vocab():
    with pytest.raises(ValueError, match="vocab_size"):
        BigramLanguageModel(0)


# ----------------------------------------------------------------------------------------------
# Teaching MultiHeadAttention == production CausalSelfAttention


def copy_mha_into_csa(mha: MultiHeadAttention, csa: CausalSelfAttention):
    with torch.no_grad():
        q = torch.cat([h.query.weight for h in mha.heads], dim=0)
        k = torch.cat([h.key.weight for h in mha.heads], dim=0)
        v = torch.cat([h.value.weight for h in mha.heads], dim=0)
        csa.c_attn.weight.copy_(torch.cat([q, k, v], dim=0))
        csa.c_attn.bias.zero_()
        csa.c_proj.weight.copy_(mha.proj.weight)
        csa.c_proj.bias.copy_(mha.proj.bias)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_multihead_matches_causal_self_attention(backend, dtype, atol):
    n_head, n_embd, block_size, T = 4, 32, 16, 13
    torch.manual_seed(0)
    mha = MultiHeadAttention(n_head, n_embd // n_head, n_embd, block_size).eval()
    cfg = GPTConfig(vocab_size=10, block_size=block_size, n_layer=1, n_head=n_head, n_embd=n_embd,
                    bias=True, backend=backend)
    csa = CausalSelfAttention(cfg).eval()
    with torch.no_grad():  # make sure the copy really overwrites something different
        csa.c_attn.bias.normal_()
    copy_mha_into_csa(mha, csa)
    mha, csa = mha.to(dtype), csa.to(dtype)
    x = torch.randn(3, T, n_embd, dtype=dtype)
    with torch.no_grad():
        a, b = mha(x), csa(x)
    assert a.shape == b.shape == (3, T, n_embd) and b.dtype == dtype
    torch.testing.assert_close(b, a, atol=atol, rtol=0)


def test_multihead_copy_detects_wrong_head_order():
    # sanity check of the test itself: swapping two heads' queries breaks the match
    n_head, n_embd = 4, 32
    torch.manual_seed(0)
    mha = MultiHeadAttention(n_head, n_embd // n_head, n_embd, 16).eval()
    csa = CausalSelfAttention(GPTConfig(vocab_size=10, block_size=16, n_layer=1, n_head=n_head, n_embd=n_embd,
                                        backend="eager")).eval()
    copy_mha_into_csa(mha, csa)
    with torch.no_grad():
        w = csa.c_attn.weight
        w[:8], w[8:16] = w[8:16].clone(), w[:8].clone()
        x = torch.randn(2, 10, n_embd)
        assert (mha(x) - csa(x)).abs().max() > 1e-4


# ----------------------------------------------------------------------------------------------
# GPT


def test_gpt_forward_shapes_and_initial_loss():
    V = 65
    m = tiny_gpt(vocab_size=V, n_embd=48, n_head=6, n_layer=3, block_size=32)
    x = torch.randint(V, (4, 32), generator=torch.Generator().manual_seed(0))
    y = torch.randint(V, (4, 32), generator=torch.Generator().manual_seed(1))
    logits, loss = m(x, y)
    assert logits.shape == (4, 32, V) and logits.dtype == torch.float32
    assert abs(loss.item() - math.log(V)) < 0.3
    logits2, loss2 = m(x[:, :5])
    assert logits2.shape == (4, 5, V) and loss2 is None
    # causal: a prefix's logits do not depend on what follows
    torch.testing.assert_close(logits2, logits[:, :5], atol=1e-5, rtol=0)


def test_gpt_ignore_index():
    m = tiny_gpt()
    x = torch.randint(37, (2, 8))
    y = torch.randint(37, (2, 8))
    y_masked = y.clone()
    y_masked[:, :4] = -1
    logits, loss = m(x, y_masked)
    expected = F.cross_entropy(logits[:, 4:].reshape(-1, 37), y[:, 4:].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_gpt_matches_textbook_pre_ln_forward():
    # GPTBlock folds each residual add into the next LayerNorm; it must equal the textbook block
    # x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)) followed by ln_f and lm_head.
    m = tiny_gpt(seed=3)
    with torch.no_grad():  # non-trivial LayerNorm gains and biases
        for name, p in m.named_parameters():
            if "ln_" in name:
                p.normal_(mean=1.0 if name.endswith("weight") else 0.0, std=0.1)
    idx = torch.randint(37, (2, 11))
    tr = m.transformer
    with torch.no_grad():
        x = tr.wte(idx) + tr.wpe(torch.arange(11))
        for blk in tr.h:
            x = x + blk.attn(F.layer_norm(x, (32,), blk.ln_1.weight, blk.ln_1.bias, 1e-5))
            h = F.layer_norm(x, (32,), blk.ln_2.weight, blk.ln_2.bias, 1e-5)
            x = x + blk.mlp.c_proj(F.gelu(blk.mlp.c_fc(h), approximate="tanh"))
        expected = m.lm_head(F.layer_norm(x, (32,), tr.ln_f.weight, tr.ln_f.bias, 1e-5))
        logits, _ = m(idx)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", [
    dict(activation="relu"), dict(activation="gelu_exact"), dict(bias=False), dict(tie_weights=False), dict(n_layer=1),
])
def test_gpt_variants_forward_backward(kw):
    m = tiny_gpt(**kw).train()
    x = torch.randint(37, (2, 16))
    _, loss = m(x, x)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    if kw.get("bias") is False:
        assert not any(n.endswith("bias") for n, _ in m.named_parameters())


def test_tie_weights_shares_storage():
    m = tiny_gpt()
    assert m.lm_head.weight is m.transformer.wte.weight
    assert m.lm_head.weight.data_ptr() == m.transformer.wte.weight.data_ptr()
    with torch.no_grad():
        m.lm_head.weight[0, 0] = 123.0
    assert m.transformer.wte.weight[0, 0].item() == 123.0
    u = tiny_gpt(tie_weights=False)
    assert u.lm_head.weight.data_ptr() != u.transformer.wte.weight.data_ptr()


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_num_params(tie, bias):
    cfg = tiny_config(tie_weights=tie, bias=bias)
    m = GPT(cfg)
    V, T, L, C = cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_embd
    b = 1 if bias else 0
    ln = C + b * C
    per_block = (
        ln  # ln_1
        + 3 * C * C + b * 3 * C  # c_attn
        + C * C + b * C  # attn c_proj
        + ln  # ln_2
        + 4 * C * C + b * 4 * C  # c_fc
        + 4 * C * C + b * C  # mlp c_proj
    )
    total = V * C + T * C + L * per_block + ln + (0 if tie else V * C)
    assert m.num_params(non_embedding=False) == total
    assert m.num_params() == total - T * C
    # the tied matrix counts once
    assert m.num_params(non_embedding=False) == sum({p.data_ptr(): p.numel() for p in m.parameters()}.values())


@pytest.mark.parametrize("kw, field", [
    (dict(n_embd=30, n_head=4), "n_embd"),
    (dict(dropout=-0.1), "dropout"),
    (dict(dropout=1.0), "dropout"),
    (dict(activation="swish"), "activation"),
    (dict(backend="fast"), "backend"),
    (dict(n_layer=0), "n_layer"),
    (dict(n_head=-2), "n_head"),
    (dict(vocab_size=3.5), "vocab_size"),
    (dict(block_size=True), "block_size"),
])
def test_config_validation(kw, field):
    with pytest.raises(ValueError, match=rf"GPTConfig\.{field}"):
        tiny_config(**kw)


def test_config_dict_round_trip():
    cfg = tiny_config(activation="relu", tie_weights=False)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="n_heads"):
        GPTConfig.from_dict({**cfg.to_dict(), "n_heads": 4})


def test_forward_longer_than_block_size():
    m = tiny_gpt(block_size=8)
    m(torch.zeros((1, 8), dtype=torch.long))
    with pytest.raises(ValueError, match="block_size 8"):
        m(torch.zeros((1, 9), dtype=torch.long))


def greedy_reference(model, idx, n):
    bs = model.config.block_size
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(idx[:, -bs:])
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def test_generate_crops_to_block_size():
    m = tiny_gpt(block_size=8)
    prompt = torch.tensor([[3], [5]])
    out = m.generate(prompt, max_new_tokens=16, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 17)
    assert torch.equal(out[:, :1], prompt)
    assert int(out.min()) >= 0 and int(out.max()) < 37


def test_generate_greedy_temperature_zero():
    m = tiny_gpt(block_size=8)
    prompt = torch.tensor([[1, 2, 3]])
    a = m.generate(prompt, 12, temperature=0)
    b = m.generate(prompt, 12, temperature=0.0)
    assert torch.equal(a, b)
    assert torch.equal(a, greedy_reference(m, prompt, 12))


def test_generate_top_k_1_is_greedy():
    m = tiny_gpt(block_size=8)
    prompt = torch.tensor([[4], [7]])
    g = torch.Generator().manual_seed(123)
    assert torch.equal(m.generate(prompt, 12, temperature=1.0, top_k=1, generator=g), greedy_reference(m, prompt, 12))


def test_generate_reproducible_and_keeps_mode():
    m = tiny_gpt().train()
    prompt = torch.tensor([[0]])
    a = m.generate(prompt, 10, top_k=5, generator=torch.Generator().manual_seed(9))
    b = m.generate(prompt, 10, top_k=5, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    assert m.training
    assert m.generate(prompt, 0).shape == (1, 1)


@pytest.mark.parametrize("kw", [
    dict(temperature=-1.0), dict(temperature=float("nan")), dict(temperature=float("inf")),
    dict(top_k=0), dict(top_k=-3), dict(max_new_tokens=-1),
])
def test_generate_invalid_arguments(kw):
    m = tiny_gpt()
    kw = {"max_new_tokens": 3, **kw}
    with pytest.raises(ValueError):
        m.generate(torch.tensor([[0]]), **kw)


def test_backends_agree():
    m = tiny_gpt(seed=5)
    x = torch.randint(37, (3, 16))
    out = {}
    for backend in BACKENDS:
        m.config.backend = backend
        assert all(blk.attn.config.backend == backend for blk in m.transformer.h)
        with torch.no_grad():
            out[backend] = m(x)[0]
    torch.testing.assert_close(out["sdpa"], out["eager"], atol=1e-5, rtol=0)


def _cpu_unavailable_ops():
    return [op for op in ops.OPS if "cpu" not in ops.available_backends(op, "cpu")]


def test_auto_backend_unavailable():
    missing = _cpu_unavailable_ops()
    if not missing:
        pytest.skip("every op has a CPU kernel: 'auto' works on the CPU")
    m = tiny_gpt(backend="auto")
    # the forward reaches the ops in this order: ln_1 (layer_norm), attention, ..., gelu_mlp
    first = next(op for op in ("layer_norm", "attention", "gelu_mlp") if op in missing)
    with pytest.raises(ops.BackendUnavailable, match=first) as ei:
        m(torch.zeros((1, 4), dtype=torch.long))
    assert isinstance(ei.value, ValueError)


def test_auto_attention_unavailable():
    if "cpu" in ops.available_backends("attention", "cpu"):
        pytest.skip("pygpt._C has a CPU attention kernel")
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ops.BackendUnavailable, match="attention"):
        ops.attention(q, q, q, backend="auto")


def test_training_smoke():
    torch.manual_seed(0)
    m = GPT(tiny_config(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32)).train()
    x = torch.randint(32, (4, 16))
    y = torch.randint(32, (4, 16))
    opt = configure_optimizer(m, weight_decay=0.1, learning_rate=3e-3, betas=(0.9, 0.95), device_type="cpu")
    losses = []
    for _ in range(30):
        _, loss = m(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.5, losses
    assert m.lm_head.weight is m.transformer.wte.weight  # still tied after training


def test_configure_optimizer_groups():
    m = tiny_gpt()
    opt = configure_optimizer(m, weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.95), device_type="cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == m.num_params(non_embedding=False)
