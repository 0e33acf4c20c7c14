"""Synthetic tasks served on the fly instead of a prepared data set (train.bin / val.bin).

A task looks like a pygpt.data.Dataset to the trainer (get_batch, tokenizer, vocab_size, meta)
and adds `exact_match(model, ...)`, the accuracy of greedily decoded answers on a held-out set
that training never sees. `python -m pygpt.train --task addition --digits 3` trains one (or --task calculator);
`python -m pygpt.eval_task --ckpt DIR` evaluates a checkpoint.
"""

from __future__ import annotations

from .addition import MAX_DIGITS, AdditionTask
from .calculator import CalculatorTask

TASKS = {"addition": AdditionTask, "calculator": CalculatorTask}


def make_task(name: str, **options):
    """A task by name, e.g. make_task('addition', digits=3, reverse=True, mask=True)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    return TASKS[name](**options)


def task_from_config(config: dict):
    """Rebuild a task from its `config()` dict, as stored in a checkpoint."""
    options = dict(config)
    return make_task(options.pop("name"), **options)


__all__ = ["MAX_DIGITS", "TASKS", "AdditionTask", "CalculatorTask", "make_task", "task_from_config"]
