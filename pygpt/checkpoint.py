"""Checkpoints: one file, `ckpt.pt`, written atomically; everything needed to resume or sample.

Contents: model weights, optimizer state, the model and training configs, the tokenizer, the
iteration, the best val loss and the RNG states. Loaded with `weights_only=True` (no pickled code).
"""

from __future__ import annotations

import os

import torch

from .model import GPT, BigramLanguageModel, GPTConfig
from .tokenizers import tokenizer_from_dict

CKPT_NAME = "ckpt.pt"
FORMAT = "pygpt-ckpt-1"


def ckpt_path(path: str) -> str:
    """A checkpoint argument may name the file or the run folder holding ckpt.pt."""
    if os.path.isdir(path):
        path = os.path.join(path, CKPT_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def save(path: str, state: dict) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename over `path`:
    a crash at any point leaves either the old checkpoint or the new one, never half of one."""
    state = dict(state, format=FORMAT)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: str, map_location="cpu") -> dict:
    path = ckpt_path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pygpt checkpoint")
    return state


def build_model(state: dict):
    """The model a checkpoint describes (weights not loaded yet)."""
    if state["model_type"] == "bigram":
        return BigramLanguageModel(state["model_config"]["vocab_size"])
    return GPT(GPTConfig.from_dict(state["model_config"]))


def load_model(path: str, device="cpu", backend: str | None = None):
    """(model in eval mode, tokenizer, checkpoint dict) from a checkpoint file or run folder."""
    state = load(path)
    if backend is not None and state["model_type"] == "gpt":
        state["model_config"] = dict(state["model_config"], backend=backend)
    model = build_model(state)
    load_weights(model, state["model"], path)
    model.to(device).eval()
    return model, tokenizer_from_dict(state["tokenizer"]), state


def load_weights(model, weights: dict, where: str) -> None:
    own = model.state_dict()
    bad = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    if bad or missing or extra:
        detail = "; ".join(
            s for s in (
                f"shape mismatch in {bad[0]} ({tuple(weights[bad[0]].shape)} vs {tuple(own[bad[0]].shape)})" if bad else "",
                f"missing {missing[:3]}" if missing else "",
                f"unexpected {extra[:3]}" if extra else "",
            ) if s
        )
        raise ValueError(f"checkpoint {where} does not fit this model: {detail}")
    model.load_state_dict(weights)
