"""Exact match of a task checkpoint on held-out problems: python -m pygpt.eval_task --ckpt DIR [--n 10000].

The task (addition or calculator, its digits and layout) is read from the checkpoint, which
`python -m pygpt.train --task ...` wrote; the held-out problems are the ones training never served.
"""

from __future__ import annotations

import sys

import torch

from . import checkpoint
from ._cli import Parser, run
from .tasks import task_from_config
from .train import pick_device


def main(argv=None) -> int:
    p = Parser(prog="python -m pygpt.eval_task", description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, help="a run folder (holding ckpt.pt) or a checkpoint file")
    p.add_argument("--n", type=int, default=10000, help="held-out problems (per operator for the calculator; all of them when fewer exist)")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--show", type=int, default=10, help="wrong answers to print")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    args = p.parse_args(argv)
    if args.n < 1 or args.batch_size < 1 or args.show < 0:
        raise ValueError("--n and --batch-size must be >= 1 and --show >= 0")
    device = pick_device(args.device)
    model, tok, state = checkpoint.load_model(args.ckpt, device)
    if not state.get("task"):
        raise ValueError(f"{args.ckpt} was trained on a text data set ({state.get('data')}), not a task; "
                         "sample it with python -m pygpt.sample")
    task = task_from_config(state["task"])
    if tok != task.tokenizer:
        raise ValueError(f"{args.ckpt}: the checkpoint's tokenizer is not the {task.name} task's")
    with torch.no_grad():
        r = task.exact_match(model, args.n, device, args.batch_size, max_wrong=args.show)
    print(f"{task.name} (iter {state['iter_num']}): exact match {r['accuracy']:.4f} "
          f"({r['correct']}/{r['total']} held-out problems)")
    for op, acc in r.get("by_op", {}).items():
        print(f"  {op}: {acc:.4f}")
    for w in r["wrong"]:
        print(f"  {w['problem']} = {w['expected']}, model: {w['got']} (as written: {w['raw']})")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
