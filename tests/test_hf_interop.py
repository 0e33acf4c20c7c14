"""Hugging Face GPT-2 interop: GPT.from_hf_gpt2, GPT.to_hf_gpt2_state_dict, GPT.to_hf_gpt2.

Everything is built from local configs with random weights; nothing is downloaded.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from pygpt.model import GPT, GPTConfig  # noqa: E402

V, T, C, L, H = 97, 32, 48, 3, 4


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def randomize_(model, seed, std=0.2):
    """Replace every weight by something far from the default init (LN gains around 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            p.copy_(1.0 + noise if ("ln_" in name and name.endswith("weight")) else noise)
    return model


def hf_model(seed=0, **kw):
    cfg = dict(vocab_size=V, n_positions=T, n_embd=C, n_layer=L, n_head=H, resid_pdrop=0.0, embd_pdrop=0.0,
               attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    cfg.update(kw)
    torch.manual_seed(seed)
    return randomize_(GPT2LMHeadModel(GPT2Config(**cfg)), seed).eval()


def pygpt_model(seed=0, **kw):
    cfg = dict(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=C, backend="eager")
    cfg.update(kw)
    torch.manual_seed(seed)
    return randomize_(GPT(GPTConfig(**cfg)), seed).eval()


def ids(seed=0, B=3, n=T):
    return torch.randint(V, (B, n), generator=torch.Generator().manual_seed(seed))


def hf_logits(hf, idx):
    with torch.no_grad():
        return hf(idx).logits


def our_logits(model, idx):
    with torch.no_grad():
        return model(idx)[0]


def assert_max_diff(a, b, tol=1e-5):
    assert a.shape == b.shape
    diff = (a - b).abs().max().item()
    assert diff <= tol, f"max abs diff {diff:.3g} > {tol}"


@pytest.mark.parametrize("hf_act, act", [("gelu_new", "gelu"), ("gelu", "gelu_exact"), ("relu", "relu")])
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_from_hf_model(hf_act, act, backend):
    hf = hf_model(activation_function=hf_act)
    m = GPT.from_hf_gpt2(hf, backend=backend).eval()
    c = m.config
    assert (c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd) == (V, T, L, H, C)
    assert c.activation == act and c.bias and c.tie_weights and c.backend == backend
    idx = ids()
    ref = hf_logits(hf, idx)
    assert ref.abs().max() > 1.0  # the randomised weights make the comparison meaningful
    assert_max_diff(our_logits(m, idx), ref)


def test_from_hf_state_dict():
    hf = hf_model(seed=1)
    with pytest.raises(ValueError, match="n_head"):
        GPT.from_hf_gpt2(hf.state_dict())
    m = GPT.from_hf_gpt2(hf.state_dict(), n_head=H)
    assert m.config.n_head == H and m.config.activation == "gelu" and m.config.tie_weights
    idx = ids(1)
    assert_max_diff(our_logits(m, idx), hf_logits(hf, idx))


def test_from_hf_base_model_state_dict():
    # GPT2Model's keys (no "transformer." prefix, no lm_head): the head is the tied embedding
    hf = hf_model(seed=2)
    sd = {k[len("transformer."):]: v for k, v in hf.state_dict().items() if k.startswith("transformer.")}
    m = GPT.from_hf_gpt2(sd, n_head=H)
    idx = ids(2)
    assert_max_diff(our_logits(m, idx), hf_logits(hf, idx))


def test_from_hf_untied():
    hf = hf_model(seed=3, tie_word_embeddings=False)
    assert hf.lm_head.weight.data_ptr() != hf.transformer.wte.weight.data_ptr()
    assert not torch.equal(hf.lm_head.weight, hf.transformer.wte.weight)
    m = GPT.from_hf_gpt2(hf)
    assert not m.config.tie_weights
    assert torch.equal(m.lm_head.weight, hf.lm_head.weight)
    idx = ids(3)
    assert_max_diff(our_logits(m, idx), hf_logits(hf, idx))


@pytest.mark.parametrize("act", ["gelu", "gelu_exact", "relu"])
def test_to_hf_gpt2_same_logits(act):
    m = pygpt_model(seed=4, activation=act)
    hf = m.to_hf_gpt2().eval()
    assert isinstance(hf, GPT2LMHeadModel)
    idx = ids(4)
    ref = our_logits(m, idx)
    assert ref.abs().max() > 1.0
    assert_max_diff(hf_logits(hf, idx), ref)


def test_to_hf_gpt2_untied():
    m = pygpt_model(seed=5, tie_weights=False)
    hf = m.to_hf_gpt2().eval()
    assert hf.lm_head.weight.data_ptr() != hf.transformer.wte.weight.data_ptr()
    idx = ids(5)
    assert_max_diff(hf_logits(hf, idx), our_logits(m, idx))


def test_to_hf_gpt2_needs_bias():
    m = pygpt_model(seed=6, bias=False)
    with pytest.raises(ValueError, match="bias"):
        m.to_hf_gpt2()


@pytest.mark.parametrize("kw", [dict(), dict(tie_weights=False), dict(activation="gelu_exact")])
def test_state_dict_round_trip_bitwise(kw):
    m = pygpt_model(seed=7, **kw)
    sd = m.to_hf_gpt2_state_dict()
    # HF layout: Conv1D weights are (in, out)
    assert sd["transformer.h.0.attn.c_attn.weight"].shape == (C, 3 * C)
    assert sd["transformer.h.0.mlp.c_proj.weight"].shape == (4 * C, C)
    m2 = GPT.from_hf_gpt2(sd, n_head=H, activation=m.config.activation, backend="eager").eval()
    assert m2.config == m.config
    own, back = m.state_dict(), m2.state_dict()
    assert own.keys() == back.keys()
    for k in own:
        assert torch.equal(own[k], back[k]), k
    idx = ids(7)
    assert torch.equal(our_logits(m2, idx), our_logits(m, idx))
    if m.config.tie_weights:
        assert m2.lm_head.weight is m2.transformer.wte.weight


def test_state_dict_export_is_a_copy():
    m = pygpt_model(seed=8)
    sd = m.to_hf_gpt2_state_dict()
    with torch.no_grad():
        sd["transformer.ln_f.bias"].add_(1.0)
        sd["transformer.h.0.attn.c_attn.weight"].add_(1.0)
    assert not torch.equal(sd["transformer.ln_f.bias"], m.transformer.ln_f.bias)
    assert not torch.equal(sd["transformer.h.0.attn.c_attn.weight"], m.transformer.h[0].attn.c_attn.weight.t())


@pytest.mark.parametrize("key", [
    "transformer.h.1.attn.c_attn.bias", "transformer.h.2.mlp.c_fc.weight", "transformer.ln_f.weight",
])
def test_wrong_shape_names_key(key):
    sd = hf_model(seed=9).state_dict()
    v = sd[key]
    sd[key] = torch.zeros(v.shape[:-1] + (v.shape[-1] + 1,))
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        GPT.from_hf_gpt2(sd, n_head=H)


def test_unexpected_key():
    sd = dict(hf_model(seed=10).state_dict())
    sd["transformer.h.0.attn.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.attn\.extra\.weight"):
        GPT.from_hf_gpt2(sd, n_head=H)


@pytest.mark.parametrize("kw, word", [
    (dict(layer_norm_epsilon=1e-6), "eps"),
    (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    (dict(reorder_and_upcast_attn=True), "reorder_and_upcast_attn"),
    (dict(scale_attn_weights=False), "scale_attn_weights"),
    (dict(activation_function="silu"), "silu"),
])
def test_unsupported_hf_options(kw, word):
    hf = hf_model(seed=11, **kw)
    with pytest.raises(ValueError, match=word):
        GPT.from_hf_gpt2(hf)
