"""The models, from the lecture's bigram baseline to GPT-2.

Read top to bottom:
  1. BigramLanguageModel  - the lecture's baseline: the next token from the current one alone.
  2. Head, MultiHeadAttention, FeedForward, Block - the lecture's teaching modules, one head per
     module, exactly as built up in the video.
  3. GPTConfig, CausalSelfAttention, MLP, LayerNorm, GPTBlock, GPT - the production model: heads
     as a batch dimension (the lecture's exercise 1), every hot op through pygpt.ops so that a
     config switch (`backend`) moves the whole model onto fused kernels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F

from . import ops

# ----------------------------------------------------------------------------------------------
# 1. The bigram baseline


class BigramLanguageModel(nn.Module):
    """Each token reads off the logits for the next token from a lookup table (V x V)."""

    def __init__(self, vocab_size: int):
        super().__init__()
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        self.vocab_size = vocab_size
        self.token_embedding_table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx, targets=None):
        logits = self.token_embedding_table(idx)  # (B, T, V)
        loss = None
        if targets is not None:
            B, T, V = logits.shape
            loss = F.cross_entropy(logits.view(B * T, V), targets.view(B * T), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        for tok in generate_stream(self, idx, max_new_tokens, temperature, top_k, None, generator):
            idx = torch.cat((idx, tok), dim=1)
        return idx


# ----------------------------------------------------------------------------------------------
# 2. The lecture's teaching modules (one module per head, ReLU feed-forward, post-sum LayerNorm)


class Head(nn.Module):
    """One head of causal self-attention."""

    def __init__(self, n_embd, head_size, block_size, dropout=0.0):
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=False)
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)
        self.register_buffer("tril", torch.tril(torch.ones(block_size, block_size)))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        B, T, C = x.shape
        k = self.key(x)  # (B, T, hs)
        q = self.query(x)  # (B, T, hs)
        # affinities: dot products of queries with keys, scaled so the softmax stays diffuse at init
        wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5  # (B, T, T)
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float("-inf"))  # the future cannot talk
        wei = F.softmax(wei, dim=-1)
        wei = self.dropout(wei)
        return wei @ self.value(x)  # (B, T, hs)


class MultiHeadAttention(nn.Module):
    """Several heads in parallel (a Python list of them), concatenated, then projected."""

    def __init__(self, num_heads, head_size, n_embd, block_size, dropout=0.0, bias=True):
        super().__init__()
        self.heads = nn.ModuleList([Head(n_embd, head_size, block_size, dropout) for _ in range(num_heads)])
        self.proj = nn.Linear(head_size * num_heads, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        out = torch.cat([h(x) for h in self.heads], dim=-1)
        return self.dropout(self.proj(out))


class FeedForward(nn.Module):
    """A linear layer, a non-linearity, a linear layer: per-token computation after communication."""

    def __init__(self, n_embd, dropout=0.0, activation="relu", bias=True):
        super().__init__()
        act = {"relu": nn.ReLU(), "gelu": nn.GELU(approximate="tanh"), "gelu_exact": nn.GELU()}[activation]
        self.net = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd, bias=bias), act, nn.Linear(4 * n_embd, n_embd, bias=bias), nn.Dropout(dropout)
        )

    def forward(self, x):
        return self.net(x)


class Block(nn.Module):
    """Transformer block: communication (attention) then computation (feed-forward), pre-LN residual."""

    def __init__(self, n_embd, n_head, block_size, dropout=0.0, activation="relu", bias=True):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        self.sa = MultiHeadAttention(n_head, n_embd // n_head, n_embd, block_size, dropout, bias)
        self.ffwd = FeedForward(n_embd, dropout, activation, bias)
        self.ln1 = nn.LayerNorm(n_embd, bias=bias)
        self.ln2 = nn.LayerNorm(n_embd, bias=bias)

    def forward(self, x):
        x = x + self.sa(self.ln1(x))  # residual connections keep a gradient highway to the input
        x = x + self.ffwd(self.ln2(x))
        return x


# ----------------------------------------------------------------------------------------------
# 3. The production GPT

ACTIVATIONS = ("gelu", "gelu_exact", "relu")


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 256  # the longest context the model sees
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = True  # biases in Linear layers and LayerNorms (GPT-2: True)
    activation: str = "gelu"  # 'gelu' (tanh approximation, GPT-2), 'gelu_exact', or 'relu' (the lecture)
    tie_weights: bool = True  # share the token embedding with lm_head (GPT-2 does)
    backend: str = "sdpa"  # pygpt.ops backend for every op: eager | sdpa | cpu | cuda | triton | auto

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {v!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not (0.0 <= self.dropout < 1.0):
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"GPTConfig.activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.backend not in ops.BACKENDS:
            raise ValueError(f"GPTConfig.backend must be one of {ops.BACKENDS}, got {self.backend!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown GPTConfig fields: {', '.join(sorted(unknown))}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def _backend_for(op: str, backend: str) -> str:
    # 'sdpa' names torch's attention; the other ops then run their eager reference
    return "eager" if backend == "sdpa" and op != "attention" else backend


class CausalSelfAttention(nn.Module):
    """All heads at once: one projection makes q, k, v for every head; heads become a batch dim."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs): a view, not a copy, so q/k/v are non-contiguous slices
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        dropout_p = self.config.dropout if self.training else 0.0
        y = ops.attention(q, k, v, causal=True, dropout_p=dropout_p, backend=self.config.backend)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        if self.config.activation == "relu":  # the lecture's FFN; no fused kernel, always eager
            y = self.c_proj(F.relu(self.c_fc(x)))
        else:
            approximate = "tanh" if self.config.activation == "gelu" else "none"
            y = ops.gelu_mlp(
                x, self.c_fc.weight, self.c_fc.bias, self.c_proj.weight, self.c_proj.bias,
                approximate=approximate, backend=_backend_for("gelu_mlp", self.config.backend),
            )
        return self.dropout(y)


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias and an optional fused residual add (see pygpt.ops.layer_norm)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(torch.ones(config.n_embd))
        self.bias = nn.Parameter(torch.zeros(config.n_embd)) if config.bias else None

    def forward(self, x, residual=None):
        return ops.layer_norm(
            x, self.weight, self.bias, 1e-5, residual=residual, backend=_backend_for("layer_norm", self.config.backend)
        )


class GPTBlock(nn.Module):
    """Pre-LN block, written so that each LayerNorm also performs the residual add before it.

    The textbook block is  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x)).  Here a block receives the
    residual stream x and the previous block's not-yet-added output `delta`, and returns the new
    stream and its own MLP output, so every `x + delta` is done inside a fused LayerNorm call.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config)
        self.mlp = MLP(config)

    def forward(self, x, delta=None):
        if delta is None:
            h = self.ln_1(x)
        else:
            h, x = self.ln_1(delta.to(x.dtype), residual=x)  # x <- x + delta;  h = ln_1(x)
        a = self.attn(h)
        h, x = self.ln_2(a.to(x.dtype), residual=x)  # x <- x + a;  h = ln_2(x)
        return x, self.mlp(h)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
                wpe=nn.Embedding(config.block_size, config.n_embd),  # learned position embeddings
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([GPTBlock(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2: each block adds two projections into the residual stream; scale their init by
        # 1/sqrt(2·n_layer) so the stream's variance does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without the position embeddings (the token embedding is
        shared with lm_head when tied, so it counts once, as weights of the output layer)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx, targets=None):
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        delta = None
        for block in self.transformer.h:
            x, delta = block(x, delta)
        x, _ = self.transformer.ln_f(delta.to(x.dtype), residual=x)  # LN(x + last MLP output)
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            # targets of -1 are ignored (masked positions, e.g. a prompt the model should not learn)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        """Append max_new_tokens sampled tokens to idx (B, T); the context is cropped to block_size."""
        for tok in generate_stream(self, idx, max_new_tokens, temperature, top_k, self.config.block_size, generator):
            idx = torch.cat((idx, tok), dim=1)
        return idx

    # -- Hugging Face GPT-2 interop ------------------------------------------------------------

    # HF's GPT-2 stores these as Conv1D weights, (in, out): the transpose of nn.Linear's (out, in)
    _HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

    @classmethod
    def from_hf_gpt2(cls, model_or_state_dict, n_head: int | None = None, **overrides) -> "GPT":
        """Build a GPT from a Hugging Face GPT2LMHeadModel (or its state_dict plus n_head)."""
        if isinstance(model_or_state_dict, dict):
            sd = dict(model_or_state_dict)
            if n_head is None:
                raise ValueError("from_hf_gpt2 with a state_dict needs n_head (it cannot be read off the shapes)")
            act = "gelu"
        else:
            hf = model_or_state_dict
            c = hf.config
            if abs(getattr(c, "layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
                raise ValueError(f"pygpt's LayerNorm uses eps 1e-5, the HF model uses {c.layer_norm_epsilon}")
            for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
                if getattr(c, flag, False):
                    raise ValueError(f"HF GPT-2 option {flag}=True is not supported")
            if not getattr(c, "scale_attn_weights", True):  # pygpt always scales by 1/sqrt(head_size)
                raise ValueError("HF GPT-2 option scale_attn_weights=False is not supported")
            acts = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact", "relu": "relu"}
            if c.activation_function not in acts:
                raise ValueError(f"HF activation_function {c.activation_function!r} is not supported")
            act, n_head = acts[c.activation_function], c.n_head
            sd = hf.state_dict()
        sd = {(k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k): v for k, v in sd.items()}
        sd = {k: v for k, v in sd.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
        wte = sd["transformer.wte.weight"]
        n_layer = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.h."))
        has_bias = "transformer.ln_f.bias" in sd
        lm = sd.get("lm_head.weight")
        tie = lm is None or lm.data_ptr() == wte.data_ptr() or torch.equal(lm, wte)
        cfg = dict(
            vocab_size=wte.size(0), block_size=sd["transformer.wpe.weight"].size(0), n_layer=n_layer,
            n_head=n_head, n_embd=wte.size(1), bias=has_bias, activation=act, tie_weights=tie, dropout=0.0,
        )
        cfg.update(overrides)
        model = cls(GPTConfig(**cfg))
        own = model.state_dict()
        with torch.no_grad():
            for k, v in sd.items():
                if k == "lm_head.weight" and tie:
                    continue
                if k not in own:
                    raise ValueError(f"unexpected key in the HF state dict: {k}")
                if k.endswith(cls._HF_TRANSPOSED):
                    v = v.t()
                if own[k].shape != v.shape:
                    raise ValueError(f"{k}: shape {tuple(v.shape)} does not fit the model's {tuple(own[k].shape)}")
                own[k].copy_(v)
        return model

    def to_hf_gpt2_state_dict(self) -> dict:
        """This model's weights in Hugging Face GPT2LMHeadModel's layout (Conv1D transposes)."""
        out = {}
        for k, v in self.state_dict().items():
            out[k] = v.t().contiguous() if k.endswith(self._HF_TRANSPOSED) else v.clone()
        return out

    def to_hf_gpt2(self):
        """A transformers.GPT2LMHeadModel holding this model's weights (needs `transformers`)."""
        from transformers import GPT2Config, GPT2LMHeadModel

        c = self.config
        act = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu"}[c.activation]
        if not c.bias:
            raise ValueError("HF GPT-2 always has biases; this model was built with bias=False")
        hf_cfg = GPT2Config(
            vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
            activation_function=act, resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout,
            layer_norm_epsilon=1e-5, tie_word_embeddings=c.tie_weights,
            bos_token_id=c.vocab_size - 1, eos_token_id=c.vocab_size - 1,  # GPT-2's 50256 may not exist here
        )
        hf = GPT2LMHeadModel(hf_cfg)
        missing, unexpected = hf.load_state_dict(self.to_hf_gpt2_state_dict(), strict=False)
        missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]
        if missing or unexpected:
            raise ValueError(f"HF export mismatch: missing {missing}, unexpected {unexpected}")
        return hf


def generate_stream(model, idx, max_new_tokens, temperature=1.0, top_k=None, block_size=None, generator=None):
    """Yield one (B, 1) tensor of sampled tokens at a time; temperature 0 means greedy (argmax)."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for _ in range(max_new_tokens):
                ctx = idx if block_size is None or idx.size(1) <= block_size else idx[:, -block_size:]
                logits, _ = model(ctx)
                logits = logits[:, -1, :].float()
                if temperature == 0:
                    nxt = logits.argmax(dim=-1, keepdim=True)
                else:
                    logits = logits / temperature
                    if top_k is not None:
                        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                        logits[logits < v[:, [-1]]] = float("-inf")  # keep only the k most likely
                    probs = F.softmax(logits, dim=-1)
                    nxt = torch.multinomial(probs, num_samples=1, generator=generator)
                idx = torch.cat((idx, nxt), dim=1)
                yield nxt
    finally:
        model.train(was_training)
