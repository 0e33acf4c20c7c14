"""Ask a trained calculator: python -m pygpt.calc "123*45" ["97/12" ...] [--ckpt out/calculator] [--trace].

The checkpoint is one that `python -m pygpt.train --task calculator` wrote. The model writes the
answer (and its chain-of-thought trace) by greedy decoding; nothing here computes it. --trace shows
the model's steps, --check compares its answer with Python's arithmetic. An answer the model
writes that is malformed, or a division whose remainder is not below the divisor, is reported as
such (exit status 1) rather than shown as a result.

Expressions are two non-negative integers around one of + - * / (x and : also mean * and /).
Division is integer division: 97/12 = 8 r 1. What the model was not trained on is refused with a
clear message, never answered: a malformed expression, a division by zero, an operator the
checkpoint did not learn, or an operand with more digits than it learned for that operator.
"""

from __future__ import annotations

import re
import sys

import torch

from . import checkpoint
from ._cli import Parser, run
from .tasks import CalculatorTask, task_from_config
from .train import pick_device

_EXPR = re.compile(r"^\s*(\d+)\s*([-+*/x×:÷])\s*(\d+)\s*$")
_CANON = {"x": "*", "×": "*", ":": "/", "÷": "/"}


def parse_expression(expr: str, task: CalculatorTask) -> tuple[str, int, int]:
    """(op, a, b) of an expression this task can answer; ValueError naming what is wrong otherwise."""
    m = _EXPR.match(expr)
    if not m:
        if re.match(r"^\s*-\s*\d", expr) or re.search(r"[-+*/x×:÷]\s*-\s*\d", expr):
            raise ValueError(f"{expr!r}: negative operands are not supported (write a-b with a, b >= 0)")
        raise ValueError(f"{expr!r} is not an expression the calculator knows: write two non-negative "
                         "integers around one of + - * /, e.g. 123*45")
    a, op, b = m.group(1), _CANON.get(m.group(2), m.group(2)), m.group(3)
    if op not in task.ops:
        raise ValueError(f"{expr!r}: this checkpoint was not trained on {op} (it knows {' '.join(task.ops)})")
    w = task.width(op)
    for v in (a, b):
        if len(v.lstrip("0") or "0") > w:
            raise ValueError(f"{expr!r}: {int(v)} has more than {w} digits; this checkpoint learned {op} "
                             f"for operands 0..{10**w - 1} only")
    if op == "/" and int(b) == 0:
        raise ValueError(f"{expr!r}: division by zero")
    return op, int(a), int(b)


def show(op: str, value) -> str:
    return f"{value[0]} r {value[1]}" if op == "/" else str(value)


def main(argv=None) -> int:
    p = Parser(prog="python -m pygpt.calc", description=__doc__.split("\n")[0])
    p.add_argument("expr", nargs="+", help='e.g. "123*45" (quote it for the shell)')
    p.add_argument("--ckpt", default="out/calculator", help="a run folder (holding ckpt.pt) or a checkpoint file")
    p.add_argument("--trace", action="store_true", help="show the model's chain-of-thought steps")
    p.add_argument("--check", action="store_true", help="say whether the model's answer is right")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    args = p.parse_args(argv)
    model, tok, state = checkpoint.load_model(args.ckpt, pick_device(args.device))
    task_cfg = state.get("task") or {}
    if task_cfg.get("name") != "calculator":
        raise ValueError(f"{args.ckpt} is not a calculator checkpoint (it was trained on "
                         f"{task_cfg.get('name') or state.get('data')}); train one with "
                         "python -m pygpt.train --task calculator")
    task = task_from_config(task_cfg)
    exprs = args.expr
    if len(exprs) > 1 and any(e.strip() in "+-*/x×:÷" and e.strip() for e in exprs):
        exprs = [" ".join(exprs)]  # an unquoted 97 / 12 arrives as three arguments
    problems = [parse_expression(e, task) for e in exprs]  # refuse before answering anything
    generated = task.generate(model, problems, next(model.parameters()).device)
    status = 0
    for (op, a, b), g in zip(problems, generated):
        g = g[: g.index("$") + 1] if "$" in g else g
        got = task.parse_answer(op, g)
        if got is None:
            print(f"{a}{op}{b}: the model did not write a well-formed answer (it wrote {g!r})")
            status = 1
            continue
        if op == "/" and got[1] >= b:  # an answer no division has: say so, do not pass it on
            print(f"{a}{op}{b}: the model's answer {show(op, got)} is not a division result "
                  f"(remainder {got[1]} >= divisor {b})" + (f"; the true answer is {show(op, task.answer(op, a, b))}"
                                                            if args.check else ""))
            status = 1
            continue
        line = f"{a}{op}{b} = {show(op, got)}"
        if args.check:
            true = task.answer(op, a, b)
            line += "  (correct)" if got == true else f"  (wrong: {a}{op}{b} = {show(op, true)})"
        print(line)
        if args.trace:
            for step in task.render_trace(op, a, b, g):
                print(f"  {step}")
            print(f"  as written: {task.parts(op, a, b)[0]}{g}")
    return status


if __name__ == "__main__":
    with torch.no_grad():
        sys.exit(run(main))
