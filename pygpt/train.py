"""Train a model: python -m pygpt.train --preset shakespeare-cpu [--n-layer 8 ...] [--fused].

The loop is the lecture's: sample a batch, forward, loss, backward, step; every `eval_interval`
steps estimate the train and val loss on `eval_iters` fresh batches, write a checkpoint and the
loss curve. Around it: AdamW with decay/no-decay groups, linear warmup then cosine decay,
gradient clipping and accumulation, bf16 autocast on CUDA, torch.compile, atomic checkpoints
written at every eval and on Ctrl-C, `--resume` and `--init-from` (pretrain, then finetune).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields

import torch

from . import checkpoint, data, ops
from ._cli import Parser, run
from .data import Dataset, resolve_dataset
from .model import GPT, BigramLanguageModel, GPTConfig
from .tasks import make_task

MODEL_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "bias", "activation", "tie_weights")
SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "activation", "tie_weights")


@dataclass
class TrainConfig:
    model: str = "gpt"  # 'gpt' or 'bigram'
    # the GPT's shape (vocab_size comes from the data set's tokenizer)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    dropout: float = 0.0
    bias: bool = True
    activation: str = "gelu"
    tie_weights: bool = True
    backend: str = "sdpa"  # pygpt.ops backend; --fused sets 'auto'
    # optimisation
    batch_size: int = 12
    grad_accum: int = 1
    max_iters: int = 2000
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 0  # 0: decay until max_iters
    decay_lr: bool = True
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    # evaluation, logging, checkpoints
    eval_interval: int = 250
    eval_iters: int = 100
    log_interval: int = 10
    sample_tokens: int = 300  # printed at the end; 0 to skip
    out_dir: str = ""  # default out/<preset>
    data: str = "shakespeare_char"
    # a synthetic task served on the fly instead of --data (pygpt.tasks), e.g. --task addition
    task: str = ""
    digits: int = 3  # addition, calculator's + and -: operand digits
    reverse: bool = True  # addition: answer digits least significant first (--no-reverse: ablation)
    mask: bool = True  # tasks: learn only what follows the prompt (--no-mask: ablation)
    mul_digits: int = 2  # calculator: operand digits of * and /
    trace: bool = True  # calculator: chain-of-thought traces for * and / (--no-trace: ablation)
    ops: str = "+-*/"  # calculator: the operators served
    eval_problems: int = 10000  # held-out problems whose exact match is measured at each eval
    # system
    device: str = "auto"
    dtype: str = "auto"  # auto: bf16 autocast on CUDA (fp16 + GradScaler without bf16), fp32 elsewhere
    compile: bool = False
    seed: int = 1337


PRESETS = {
    # The lecture's baseline: a V x V lookup table; constant lr 1e-2, batch 32, context 8.
    "bigram": dict(model="bigram", block_size=8, batch_size=32, max_iters=3000, learning_rate=1e-2,
                   decay_lr=False, warmup_iters=0, weight_decay=0.01, beta2=0.999, grad_clip=0.0,
                   eval_interval=300, eval_iters=200, log_interval=100),
    # nanoGPT's CPU configuration of shakespeare_char (it reports val loss 1.88 after 2000 iters).
    "shakespeare-cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, max_iters=2000,
                            learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, dropout=0.0, beta2=0.99,
                            eval_interval=250, eval_iters=100),
    # The lecture's final model (6 layers, 6 heads, 384 dims, context 256, dropout 0.2).
    "shakespeare": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, max_iters=5000,
                        learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, dropout=0.2, beta2=0.99,
                        eval_interval=500, eval_iters=200),
    # The lecture's exercise 2: n-digit addition (block_size follows the problem length, 3n + 2).
    # 11-token problems are cheap, so a big batch (256 problems) keeps gradient noise low at little
    # cost; 2 layers x 128 dims x 4 heads (0.4M params) is ample for a carry chain of 3 digits;
    # no dropout (the data is unlimited, there is nothing to overfit to). On one CPU thread 3 digits
    # reach 100 % exact match on 10,000 held-out problems by iter 500 (~75 s); 2000 iters is margin.
    "addition": dict(task="addition", n_layer=2, n_head=4, n_embd=128, batch_size=256, max_iters=2000,
                     learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, dropout=0.0, beta2=0.99,
                     eval_interval=250, eval_iters=20, sample_tokens=0),
    # The exercise's "swole doge": + - * / in one model, with traces for * and / (pygpt.tasks.calculator).
    # Problems are up to 32 tokens; eval_problems counts held-out problems per operator. 3 layers x
    # 128 dims (0.6M params), batch 128: on one CPU thread, 6000 iterations (~32 min) end at
    # + 100 %, - 99.7 %, * 100 %, / 97.8 % exact match on held-out problems.
    "calculator": dict(task="calculator", n_layer=3, n_head=4, n_embd=128, batch_size=128, max_iters=6000,
                       learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, dropout=0.0, beta2=0.99,
                       eval_interval=250, eval_iters=10, eval_problems=1000, sample_tokens=0),
    # GPT-2 small's shape and nanoGPT's optimisation (~0.5M tokens per step with grad_accum 40).
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=12, grad_accum=40,
                      max_iters=600000, learning_rate=6e-4, min_lr=6e-5, warmup_iters=2000, dropout=0.0,
                      beta2=0.95, eval_interval=2000, eval_iters=200),
}


def validate(cfg: TrainConfig) -> None:
    positive = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "grad_accum", "max_iters",
                "eval_interval", "eval_iters", "log_interval")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    for name in ("learning_rate",):
        if not (getattr(cfg, name) > 0 and math.isfinite(getattr(cfg, name))):
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(cfg, name)}")
    for name in ("min_lr", "weight_decay", "grad_clip", "warmup_iters", "lr_decay_iters", "sample_tokens"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(cfg, name) < 1:
            raise ValueError(f"--{name} must be in [0, 1), got {getattr(cfg, name)}")
    if cfg.model not in ("gpt", "bigram"):
        raise ValueError(f"--model must be 'gpt' or 'bigram', got {cfg.model!r}")
    if cfg.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ValueError(f"--dtype must be auto, float32, bfloat16 or float16, got {cfg.dtype!r}")
    if cfg.device not in ("auto", "cpu", "cuda", "mps") and not cfg.device.startswith("cuda:"):
        raise ValueError(f"--device must be auto, cpu, cuda or mps, got {cfg.device!r}")


# the TrainConfig fields each task takes (the flags of the others are an error with that task)
TASK_OPTIONS = {"addition": ("digits", "reverse", "mask"),
                "calculator": ("digits", "mul_digits", "trace", "mask", "ops")}
TASK_FIELDS = ("digits", "reverse", "mask", "mul_digits", "trace", "ops", "eval_problems")


def task_or_dataset(cfg: TrainConfig, overrides: dict, resuming: bool = False):
    """The --task (pygpt.tasks) or the prepared --data set the run trains on."""
    task_flags = [n for n in TASK_FIELDS if n in overrides]
    if not cfg.task:
        if task_flags:
            raise ValueError(f"--{task_flags[0].replace('_', '-')} needs --task (e.g. --task addition)")
        return Dataset(resolve_dataset(cfg.data))
    if "data" in overrides:
        raise ValueError("--task and --data exclude each other: a task makes its own data")
    if cfg.eval_problems < 1:
        raise ValueError(f"--eval-problems must be >= 1, got {cfg.eval_problems}")
    options = TASK_OPTIONS.get(cfg.task, ())
    foreign = [n for n in task_flags if n != "eval_problems" and n not in options]
    if foreign:
        raise ValueError(f"--{foreign[0].replace('_', '-')} does not apply to --task {cfg.task}")
    task = make_task(cfg.task, **{n: getattr(cfg, n) for n in options})
    if "block_size" not in overrides and not resuming:
        cfg.block_size = task.block_size  # the preset's context is one problem (a resume keeps its own)
    if cfg.block_size < task.block_size:
        raise ValueError(f"--block-size {cfg.block_size} is shorter than one {task.name} problem ({task.block_size})")
    return task


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: torch sees no CUDA device")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps: MPS is not available")
    return torch.device(name)


def autocast_dtype(cfg: TrainConfig, device: torch.device):
    """The dtype matmuls run in under autocast, or None for plain fp32."""
    if cfg.dtype == "float32" or device.type != "cuda":
        if cfg.dtype in ("bfloat16", "float16") and device.type != "cuda":
            raise ValueError(f"--dtype {cfg.dtype} needs a CUDA device; this run is on {device.type}")
        return None
    if cfg.dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, cfg.dtype)


def lr_at(it: int, cfg: TrainConfig) -> float:
    """Linear warmup for warmup_iters, then cosine decay from learning_rate to min_lr."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if it >= decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


def configure_optimizer(model, weight_decay, learning_rate, betas, device_type):
    """AdamW; weight decay on matrices (matmul weights, embeddings), none on biases and LN gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # fused: one kernel updates every parameter (torch >= 2.4 has it on CUDA and the CPU); it
    # replaces a dozen small ops per parameter per step
    fused = device_type in ("cuda", "cpu") and "fused" in inspect.signature(torch.optim.AdamW).parameters
    try:
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({"fused": True} if fused else {}))
    except RuntimeError:  # a torch without a fused AdamW for this device
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)


@torch.no_grad()
def estimate_loss(model, dataset, cfg, device, amp):
    """Mean loss over eval_iters batches per split; the same batches every time (own generator)."""
    out = {}
    model.eval()
    for split in ("train", "val"):
        g = torch.Generator().manual_seed(cfg.seed + 1)
        losses = torch.zeros(cfg.eval_iters)
        for k in range(cfg.eval_iters):
            x, y = dataset.get_batch(split, cfg.batch_size, cfg.block_size, device, g)
            with amp:
                _, loss = model(x, y)
            losses[k] = loss.item()
        out[split] = losses.mean().item()
    model.train()
    return out


def plot_losses(log_path: str, png_path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, train, evals = [], [], []
    with open(log_path, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if "loss" in r:
                steps.append(r["iter"])
                train.append(r["loss"])
            if "val_loss" in r:
                evals.append((r["iter"], r["train_loss"], r["val_loss"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, train, lw=0.8, alpha=0.6, label="train (batch)")
    if evals:
        it, tr, va = zip(*evals)
        ax.plot(it, tr, "o-", label="train (estimate)")
        ax.plot(it, va, "o-", label="val (estimate)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png_path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)


def build_parser() -> Parser:
    p = Parser(prog="python -m pygpt.train", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default=None,
                   help=f"one of: {', '.join(PRESETS)} (default: the task's own with --task, else shakespeare-cpu)")
    p.add_argument("--fused", action="store_true", help="run every op on the best fused backend ('auto')")
    p.add_argument("--resume", action="store_true", help="continue the run in --out-dir from its checkpoint")
    p.add_argument("--init-from", default=None, help="start from another run's weights (a finetune)")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, action=BooleanFlag, default=None, help=f"(default: preset's, {f.default})")
        else:
            typ = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            p.add_argument(flag, type=typ, default=None, help=f"(default: preset's, {f.default!r})")
    return p


class BooleanFlag(__import__("argparse").Action):
    """--compile / --no-compile."""

    def __init__(self, option_strings, dest, **kw):
        opts = option_strings + ["--no-" + option_strings[0][2:]]
        super().__init__(opts, dest, nargs=0, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, not option_string.startswith("--no-"))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.preset = args.preset or (args.task if args.task in PRESETS else "shakespeare-cpu")
    if args.preset not in PRESETS:
        raise ValueError(f"unknown preset {args.preset!r}; presets: {', '.join(PRESETS)}")
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    cfg = TrainConfig(**{**PRESETS[args.preset], **overrides})
    if args.fused:
        cfg.backend = "auto"
    default_dir = {"addition": f"addition-{cfg.digits}", "calculator": "calculator"}.get(cfg.task, cfg.task or args.preset)
    cfg.out_dir = cfg.out_dir or os.path.join("out", default_dir)
    if args.resume and args.init_from:
        raise ValueError("--resume and --init-from exclude each other")
    ckpt_file = os.path.join(cfg.out_dir, checkpoint.CKPT_NAME)

    state = None
    if args.resume:
        state = checkpoint.load(ckpt_file)
        saved = TrainConfig(**state["train_config"])
        for name in SHAPE_FIELDS + ("model",):
            if name in overrides and overrides[name] != getattr(saved, name):
                raise ValueError(
                    f"--{name.replace('_', '-')} {overrides[name]} differs from the checkpoint's "
                    f"{getattr(saved, name)}: a checkpoint only resumes into the same model shape"
                )
        # the checkpoint's settings, with what was given on this command line on top
        cfg = TrainConfig(**{**asdict(saved), **overrides, **({"backend": "auto"} if args.fused else {})})
    elif os.path.exists(ckpt_file):
        raise FileExistsError(f"{ckpt_file} exists: pass --resume to continue it, or --out-dir for a new run")
    dataset = task_or_dataset(cfg, overrides, state is not None)  # may set cfg.block_size to the task's problem length
    validate(cfg)

    device = pick_device(cfg.device)
    amp_dtype = autocast_dtype(cfg, device)
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    torch.manual_seed(cfg.seed)
    tok = dataset.tokenizer

    init = None
    if args.init_from:
        init = checkpoint.load(args.init_from)
        if init["tokenizer"] != tok.to_dict():
            raise ValueError(
                f"--init-from {args.init_from} was trained with another tokenizer than {dataset.path} "
                "uses; prepare the finetuning data with the pretraining tokenizer"
            )
        for name in SHAPE_FIELDS + ("model",):
            theirs = init["train_config"].get(name)
            if name in overrides and overrides[name] != theirs:
                raise ValueError(f"--{name.replace('_', '-')} {overrides[name]} differs from --init-from's {theirs}")
            setattr(cfg, name, theirs)
        validate(cfg)
    if state is not None and state["tokenizer"] != tok.to_dict():
        raise ValueError(f"the checkpoint in {cfg.out_dir} was trained on data with another tokenizer than {dataset.path}")

    if cfg.model == "bigram":
        model_config = {"vocab_size": tok.vocab_size}
        model = BigramLanguageModel(tok.vocab_size)
    else:
        gcfg = GPTConfig(vocab_size=tok.vocab_size, **{k: getattr(cfg, k) for k in MODEL_FIELDS}, backend=cfg.backend)
        model_config = gcfg.to_dict()
        model = GPT(gcfg)
        if cfg.backend == "auto":  # fail now, with the reason, rather than at the first forward
            for op in ("attention", "layer_norm") + (("gelu_mlp",) if cfg.activation != "relu" else ()):
                try:
                    ops.resolve(op, "auto", device)
                except ops.BackendUnavailable as e:
                    raise ValueError(f"--fused: {e}") from None
            if cfg.dropout > 0:
                raise ValueError(f"--fused: the fused attention kernels have no dropout yet; pass --dropout 0 "
                                 f"(got {cfg.dropout}) or train without --fused")
    if init is not None:
        checkpoint.load_weights(model, init["model"], args.init_from)
    if state is not None:
        checkpoint.load_weights(model, state["model"], ckpt_file)
    model.to(device)
    optimizer = configure_optimizer(model, cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device.type)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16) if device.type == "cuda" else None

    iter_num, best_val = 0, float("inf")
    batch_gen = torch.Generator().manual_seed(cfg.seed)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        iter_num, best_val = state["iter_num"], state["best_val_loss"]
        batch_gen.set_state(state["rng"]["batch"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    train_model = torch.compile(model) if cfg.compile else model

    os.makedirs(cfg.out_dir, exist_ok=True)
    log_path = os.path.join(cfg.out_dir, "log.jsonl")
    if state is None and os.path.exists(log_path):
        os.replace(log_path, log_path + ".old")  # never silently mix two runs' logs
    log = open(log_path, "a", encoding="utf-8")

    def save_checkpoint():
        checkpoint.save(ckpt_file, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "model_type": cfg.model,
            "model_config": model_config, "train_config": asdict(cfg), "tokenizer": tok.to_dict(),
            "iter_num": iter_num, "best_val_loss": best_val,
            "data": dataset.path if cfg.task else os.path.abspath(dataset.path),
            "task": dataset.config() if cfg.task else None,
            "rng": {"batch": batch_state, "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []},
        })

    n_params = sum(p.numel() for p in model.parameters())
    tokens_per_iter = cfg.batch_size * cfg.block_size * cfg.grad_accum
    print(f"pygpt.train: {args.preset} | {cfg.model} {n_params / 1e6:.2f}M params | device {device}"
          f"{' ' + str(amp_dtype).replace('torch.', '') + ' autocast' if amp_dtype else ''} | backend {cfg.backend}"
          f"{' | compile' if cfg.compile else ''} | {tokens_per_iter:,} tokens/iter | data {dataset.path} "
          f"| out {cfg.out_dir}" + (f" | resuming at iter {iter_num}" if state else "")
          + (f" | init from {args.init_from}" if init else ""), flush=True)

    from tqdm import tqdm

    bar = tqdm(total=cfg.max_iters, initial=iter_num, disable=None, dynamic_ncols=True, unit="it")
    t_start, train_time, tokens_seen, last_eval, last_em = time.time(), 0.0, 0, None, None
    resumed_at = iter_num if state is not None else None
    # Ctrl-C only raises a flag; the loop stops at the end of the current iteration and saves, so the
    # checkpoint always holds a whole number of optimizer steps.
    interrupted = []
    old_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))

    def next_batch():
        nonlocal batch_state
        batch_state = batch_gen.get_state()  # what regenerates this batch after a resume
        return dataset.get_batch("train", cfg.batch_size, cfg.block_size, device, batch_gen)

    batch_state = None
    x, y = next_batch()
    try:
        while True:
            lr = lr_at(iter_num, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if (iter_num % cfg.eval_interval == 0 or iter_num == cfg.max_iters) and iter_num != resumed_at:
                losses = estimate_loss(model, dataset, cfg, device, amp)
                last_eval = losses
                best_val = min(best_val, losses["val"])
                bpb = {k: data.bits_per_byte(losses[k], dataset.meta, k) for k in ("train", "val")}
                msg = f"iter {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
                if bpb["val"] is not None:  # bits per byte compare runs with different tokenizers
                    msg += f" ({bpb['train']:.3f} / {bpb['val']:.3f} bits per byte)"
                em = None
                if cfg.task:  # the task's real measure: greedily decoded answers on held-out problems
                    last_em = dataset.exact_match(model, cfg.eval_problems, device, amp=amp, greedy=False)
                    em = last_em["accuracy"]
                    msg += f", exact match {em:.4f} ({last_em['correct']}/{last_em['total']} held out)"
                    if "by_op" in last_em:
                        msg += " [" + ", ".join(f"{o} {v:.4f}" for o, v in last_em["by_op"].items()) + "]"
                if bar.disable:
                    print(msg, flush=True)
                else:
                    bar.write(msg)
                log.write(json.dumps({"iter": iter_num, "train_loss": losses["train"], "val_loss": losses["val"],
                                      "train_bpb": bpb["train"], "val_bpb": bpb["val"],
                                      **({"exact_match": em} if cfg.task else {}),
                                      **({"exact_match_by_op": last_em["by_op"]} if em is not None and "by_op" in last_em else {}),
                                      "time": time.time() - t_start}) + "\n")
                log.flush()
                save_checkpoint()
                plot_losses(log_path, os.path.join(cfg.out_dir, "loss.png"))
            if iter_num >= cfg.max_iters:
                break
            if interrupted:
                save_checkpoint()
                bar.close()
                print(f"interrupted at iter {iter_num}; checkpoint saved to {ckpt_file} (continue with --resume)",
                      file=sys.stderr)
                return 130
            t0 = time.time()
            for micro in range(cfg.grad_accum):
                with amp:
                    _, loss = train_model(x, y)
                    loss = loss / cfg.grad_accum
                # fetch the next batch while the device still works on this one
                x, y = next_batch()
                (scaler.scale(loss) if scaler else loss).backward()
            if cfg.grad_clip > 0:
                if scaler:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            iter_num += 1
            loss_val = loss.item() * cfg.grad_accum
            dt = time.time() - t0
            train_time += dt
            tokens_seen += tokens_per_iter
            bar.update(1)
            bar.set_postfix(loss=f"{loss_val:.4f}", tok_s=f"{tokens_per_iter / dt:,.0f}", refresh=False)
            if iter_num % cfg.log_interval == 0:
                log.write(json.dumps({"iter": iter_num, "loss": loss_val, "lr": lr,
                                      "tokens_per_s": tokens_per_iter / dt}) + "\n")
                if bar.disable and iter_num % (cfg.log_interval * 10) == 0:
                    print(f"iter {iter_num}: loss {loss_val:.4f}, {tokens_per_iter / dt:,.0f} tok/s", flush=True)
    finally:
        signal.signal(signal.SIGINT, old_handler)
        log.close()
    bar.close()
    wall = time.time() - t_start
    summary = {"preset": args.preset, "iters": iter_num, "wall_s": round(wall, 1),
               "tokens_per_s": round(tokens_seen / wall) if wall > 0 else None,
               "train_tokens_per_s": round(tokens_seen / train_time) if train_time > 0 else None,
               "train_loss": last_eval and last_eval["train"], "val_loss": last_eval and last_eval["val"],
               "val_bpb": last_eval and data.bits_per_byte(last_eval["val"], dataset.meta, "val"),
               "device": str(device), "backend": cfg.backend,
               **({"exact_match": last_em and last_em["accuracy"]} if cfg.task else {})}
    with open(os.path.join(cfg.out_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    val = f"{summary['val_loss']:.4f}" if last_eval else "n/a"
    if last_eval and summary["val_bpb"] is not None:
        val += f" ({summary['val_bpb']:.3f} bits per byte)"
    print(f"done: iter {iter_num}, {wall:.1f}s wall, {summary['train_tokens_per_s'] or 0:,} tokens/s in training steps "
          f"({summary['tokens_per_s'] or 0:,} incl. evals); val loss {val}; checkpoint {ckpt_file}")
    if cfg.task and last_em:
        print(f"exact match {last_em['accuracy']:.4f} on {last_em['total']} held-out problems"
              + ("".join(f"\n  {o}: {v:.4f}" for o, v in last_em["by_op"].items()) if "by_op" in last_em else "")
              + "".join(f"\n  {w['problem']} = {w['expected']}, model: {w['got']} (as written: {w['raw']})"
                        for w in last_em["wrong"]))
    elif cfg.sample_tokens:
        try:
            start_ids = tok.encode("\n")
        except ValueError:
            start_ids = [0]
        start = torch.tensor([start_ids], dtype=torch.long, device=device)
        g = torch.Generator(device=device).manual_seed(cfg.seed)
        out = model.generate(start, cfg.sample_tokens, temperature=0.8, top_k=200, generator=g)
        print("---- sample ----")
        print(tok.decode(out[0].tolist()))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
