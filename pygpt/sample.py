"""Sample text from a trained model, streaming it to stdout as it is generated.

    python -m pygpt.sample --ckpt out/shakespeare-cpu --prompt "ROMEO:" --max-new-tokens 500 \\
        --temperature 0.8 --top-k 200 --num-samples 3 --seed 1
"""

from __future__ import annotations

import sys

import torch

from . import checkpoint
from ._cli import Parser, run
from .model import generate_stream
from .train import pick_device


class StreamDecoder:
    """Text of a growing token sequence, piece by piece, for any tokenizer.

    Decoding each new token alone is right only for characters: a byte-level BPE token can be half
    of a UTF-8 character (it decodes to U+FFFD until the next token completes it), and SentencePiece
    decides spaces from the neighbouring pieces. So the whole sequence is decoded and only what is
    new is returned; while the text ends in an incomplete character nothing is returned."""

    def __init__(self, tok, prompt_ids=()):
        self.tok, self.ids = tok, list(prompt_ids)
        self.done = len(tok.decode(self.ids)) if self.ids else 0

    def push(self, new_ids) -> str:
        self.ids.extend(new_ids)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""  # wait for the rest of the character
        return self._take(text)

    def flush(self) -> str:
        return self._take(self.tok.decode(self.ids))

    def _take(self, text: str) -> str:
        new, self.done = text[self.done:], max(self.done, len(text))
        return new


def main(argv=None) -> int:
    p = Parser(prog="python -m pygpt.sample", description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, help="a run folder (holding ckpt.pt) or a checkpoint file")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="> 1 more random, < 1 more conservative, 0 greedy")
    p.add_argument("--top-k", type=int, default=200, help="sample from the k most likely tokens only (0: all)")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", default=None, help="pygpt.ops backend to sample with (default: the checkpoint's)")
    args = p.parse_args(argv)
    if args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.top_k < 0:
        raise ValueError(f"--top-k must be >= 0, got {args.top_k}")

    device = pick_device(args.device)
    model, tok, state = checkpoint.load_model(args.ckpt, device, args.backend)
    ids = tok.encode(args.prompt)
    block_size = state["train_config"]["block_size"]
    if not ids:
        raise ValueError("--prompt is empty; give at least one character")
    if len(ids) > block_size:
        raise ValueError(f"the prompt is {len(ids)} tokens, longer than the model's block_size {block_size}")
    g = torch.Generator(device=device).manual_seed(args.seed)
    for n in range(args.num_samples):
        idx = torch.tensor([ids], dtype=torch.long, device=device)
        sys.stdout.write(args.prompt)
        stream = StreamDecoder(tok, ids)
        for tok_id in generate_stream(model, idx, args.max_new_tokens, args.temperature, args.top_k or None,
                                      block_size, g):
            sys.stdout.write(stream.push(tok_id[0].tolist()))
            sys.stdout.flush()
        sys.stdout.write(stream.flush())
        sys.stdout.write("\n" + ("-" * 40 + "\n" if n + 1 < args.num_samples else ""))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
