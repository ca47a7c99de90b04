"""The training loop (accelerate): LoRA or full fine-tuning with a completion-only loss.

Why a small accelerate loop rather than HF Trainer: the speed lever here is computing the 262k-wide output
layer only where the loss counts. We pass a boolean ``logits_to_keep`` mask (transformers 5: the model gathers
those hidden states before ``lm_head``), never materialise logits for prompt or padding tokens, and plan
length-grouped batches whose token counts are known up front — which also gives exact resume (the same batches
replay from the checkpointed step) and exact token-weighted loss normalisation across accumulation and ranks.
The same loop runs one process on CPU/GPU, under ``accelerate launch`` (DDP) and under ``deepspeed`` (ZeRO-3,
from the ``--deepspeed`` json).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from garden_assets.files import publish_dir, update_sha256, write_json_atomic
from garden_assets.llm.models import run_output_path
from garden_assets.training import checkpoint as ckpt
from garden_assets.training.config import TrainConfig
from garden_assets.training.data import IGNORE_INDEX, Example, collate, load_examples, plan_steps
from garden_assets.training.deepspeed import config_precision, fill_auto, load_deepspeed_config
from garden_assets.training.report import LOG_FILE, Reporter

METRICS_FILE = "metrics.json"
_STEP_SLEEP = float(os.environ.get("GARDEN_TRAIN_SLEEP_PER_STEP", "0") or 0)


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path  # loadable with from_pretrained: merged (LoRA) or full weights + tokenizer
    adapter_dir: Path | None  # LoRA adapter (PEFT format) + tokenizer
    log_path: Path
    metrics: dict[str, Any] = field(default_factory=dict)


# -- loss ---------------------------------------------------------------------------------------------------------
def supports_logits_mask(model) -> bool:
    """Does the (unwrapped, non-PEFT) causal LM take ``logits_to_keep`` (transformers ≥ 5: a bool mask works)?"""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(type(base).forward).parameters


def loss_sum(model, batch: dict, mode: str = "completion", logits_mask: bool = True):
    """(summed token cross-entropy, number of counted tokens) for one micro-batch.

    completion: logits only at positions whose next-token label counts (the completion), via a boolean
    ``logits_to_keep``; full: the model's own loss over full logits (the dolly recipe's cost)."""
    import torch
    import torch.nn.functional as F

    labels = batch["labels"]
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    count = keep.sum()
    if mode == "full":
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels, use_cache=False)
        return out.loss * count, count
    positions = torch.zeros_like(labels, dtype=torch.bool)
    positions[:, :-1] = keep
    kwargs = {"logits_to_keep": positions} if logits_mask else {}
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, **kwargs)
    logits = out.logits
    if logits.dim() == 3:  # the architecture ignored the mask (or does not take one): select here
        logits = logits[positions]
    return F.cross_entropy(logits.float(), target[keep], reduction="sum"), count


# -- helpers ------------------------------------------------------------------------------------------------------
def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch sees no CUDA device")
    return device


def _resolve_precision(precision: str, device: str, ds_config: dict | None) -> str:
    import torch

    if ds_config is not None:
        ds_precision = config_precision(ds_config)
        if precision not in ("auto", ds_precision):
            raise ValueError(f"--precision {precision} disagrees with the DeepSpeed config ({ds_precision})")
        return ds_precision
    if precision != "auto":
        if precision == "fp16" and device == "cpu":
            raise ValueError("fp16 training needs CUDA; use fp32 or bf16 on CPU")
        return precision
    if device == "cpu":
        return "fp32"
    return "bf16" if torch.cuda.get_device_capability()[0] >= 8 else "fp16"


def _fingerprint(cfg: TrainConfig, world_size: int) -> str:
    """Identity of a run: data + everything that shapes the batch plan and the optimisation."""
    h = update_sha256(hashlib.sha256(), cfg.train_file)
    keys = ("base_model", "method", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "epochs", "max_steps",
            "max_train_tokens", "max_train_seconds", "keep_best", "learning_rate", "weight_decay", "warmup_ratio", "lr_scheduler", "batch_size",
            "grad_accum", "max_length", "batching", "seed", "precision")
    h.update(json.dumps({k: getattr(cfg, k) for k in keys} | {"world_size": world_size}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _single_process_env() -> None:
    """DeepSpeed without a launcher (one process, e.g. one GPU): provide the rendezvous env a launcher would set,
    or ZeRO-3 init falls back to MPI discovery."""
    if "RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ:
        return
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})


def _count(params) -> int:
    """Parameter count; under ZeRO-3 a partitioned parameter is empty and carries its size in ``ds_numel``."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in params)


def _finished_run(out: Path, fingerprint: str) -> dict | None:
    """The metrics of a finished run in ``out`` with this fingerprint, if its model is there."""
    path = out / METRICS_FILE
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    if metrics.get("fingerprint") != fingerprint or not run_output_path(out, metrics.get("model_dir")).is_dir():
        return None
    return metrics


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def evaluate(model, examples: list[Example], *, batch_size: int, pad_id: int, accelerator, logits_mask: bool) -> float:
    """Completion-token mean cross-entropy over ``examples`` (sharded over ranks, reduced)."""
    import torch

    if not examples:
        return float("nan")
    order = sorted(range(len(examples)), key=lambda i: examples[i].n_tokens)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    world, rank = accelerator.num_processes, accelerator.process_index
    # every rank runs the same number of forwards (ZeRO-3 gathers parameters collectively); fillers weigh 0
    padded = batches + [None] * (-len(batches) % world)
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    model.eval()
    with torch.no_grad():
        for b in padded[rank::world]:
            idx = b if b is not None else batches[0]
            batch = _to_device(collate([examples[i] for i in idx], pad_id), accelerator.device)
            loss, count = loss_sum(model, batch, "completion", logits_mask)
            if b is not None:
                total += torch.stack([loss.double(), count.double()])
    model.train()
    if world > 1:
        total = accelerator.reduce(total, reduction="sum")
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")


def _budget_lr_factor(progress: float, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` share of a time budget, then linear decay to 0 at its end."""
    if progress < warmup:
        return max(progress / warmup, 0.01)
    return max(1.0 - progress, 0.0) / max(1.0 - warmup, 1e-9) if progress < 1 else 0.0


class _BestWeights:
    """The trainable weights at the lowest eval loss seen so far, kept on the CPU (LoRA: a few MB)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.loss = float("inf")
        self.step: int | None = None
        self.state: dict | None = None

    def offer(self, loss: float, step: int, model) -> None:
        if not self.enabled or not loss < self.loss:
            return
        self.loss, self.step = loss, step
        self.state = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}

    def restore(self, model) -> int | None:
        """Load the best weights into ``model``; their step (None when there was no eval)."""
        if self.state is None:
            return None
        import torch

        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.state.items():
                params[name].copy_(value)
        return self.step


# -- the run ------------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) a fine-tune; see `TrainConfig`. Returns where the weights, adapter and log are."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin
    from transformers import AutoConfig

    out = Path(cfg.output_dir)
    device = _resolve_device(cfg.device)
    if device == "cpu" and cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    ds_config = load_deepspeed_config(cfg.deepspeed) if cfg.deepspeed else None
    precision = _resolve_precision(cfg.precision, device, ds_config)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))

    plugin = None
    if ds_config is not None:
        _single_process_env()
        hidden = getattr(AutoConfig.from_pretrained(cfg.base_model).get_text_config(), "hidden_size", None)
        filled = fill_auto(ds_config, micro_batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                           world_size=world_size, max_grad_norm=cfg.max_grad_norm, hidden_size=hidden)
        plugin = DeepSpeedPlugin(hf_ds_config=filled)
    accelerator = Accelerator(
        cpu=device == "cpu" and plugin is None,  # DeepSpeed also runs on CPU (tests), but only if not forced off
        mixed_precision={"fp32": "no", "fp16": "fp16", "bf16": "bf16"}[precision],
        gradient_accumulation_steps=cfg.grad_accum,
        deepspeed_plugin=plugin,
        step_scheduler_with_optimizer=False,  # we step it once per optimizer step ourselves
    )
    use_ds = plugin is not None
    reporter = Reporter(out, main_process=accelerator.is_main_process)
    try:
        result = _run(cfg, accelerator, reporter, device, precision, use_ds)
    except BaseException as exc:
        reporter.close(exc)
        raise
    return result


@dataclass
class _Run:
    """What every step of a run shares: the settings, the accelerator, the reporter and where it writes."""

    cfg: TrainConfig
    accelerator: Any
    reporter: Reporter
    device: str
    precision: str
    use_ds: bool
    fingerprint: str = ""
    started: float = field(default_factory=time.time)

    @property
    def out(self) -> Path:
        return Path(self.cfg.output_dir)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world(self) -> int:
        return self.accelerator.num_processes


@dataclass
class _Model:
    model: Any
    tokenizer: Any
    trainable: list
    total_params: int
    trainable_params: int
    logits_mask: bool


@dataclass
class _Data:
    train: list[Example]
    test: list[Example]
    dropped_train: int
    dropped_test: int
    plan: list  # the optimizer steps (training.data.plan_steps)
    eval_subset: list[Example]
    pad_id: int
    pad_multiple: int | None


@dataclass
class _Progress:
    """Where the run stands: steps and tokens done, seconds of training and of periodic evals (a time budget
    spends both: it bounds the loop's wall time, which is what a user waits for)."""

    step: int = 0
    tokens: int = 0
    train_time: float = 0.0
    eval_time: float = 0.0
    step_start: float | None = None  # perf_counter at the start of the step in progress
    last_loss: float = float("nan")
    resumed_from: str | None = None
    evaluated: tuple[int, float] | None = None  # (step, eval loss) of the latest periodic eval

    def budget_spent(self) -> float:
        """Seconds of steps and periodic evals, including the step in progress (the scheduler steps before it ends)."""
        in_step = time.perf_counter() - self.step_start if self.step_start is not None else 0.0
        return self.train_time + self.eval_time + in_step


def _run(cfg: TrainConfig, accelerator, reporter: Reporter, device: str, precision: str, use_ds: bool) -> TrainResult:
    """The run as named steps: build the model, load the data, set up optimisation, resume, train, finish."""
    from accelerate.utils import set_seed

    run = _Run(cfg, accelerator, reporter, device, precision, use_ds)
    if run.main:
        run.out.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed)
    run.fingerprint = _fingerprint(cfg, run.world)
    if cfg.resume and (done := _finished_run(run.out, run.fingerprint)) is not None:
        reporter.info(f"{run.out} already holds this finished run (same data and settings): nothing to do")
        reporter.finish(done)
        return TrainResult(run.out, run_output_path(run.out, done["model_dir"]),
                           run_output_path(run.out, done["adapter_dir"]) if done.get("adapter_dir") else None,
                           run.out / LOG_FILE, done)
    reporter.info(f"trainer: {cfg.method} on {device} × {run.world} ({precision}{', deepspeed' if use_ds else ''}), "
                  f"base {cfg.base_model}")
    built = _build_model(cfg, device)
    data = _load_data(cfg, built.tokenizer, run.world)
    reporter.info(f"data: {len(data.train)} train rows ({data.dropped_train} dropped > {cfg.max_length} tokens), "
                  f"{len(data.test)} test rows; {len(data.plan)} steps, {sum(s.tokens for s in data.plan)} tokens; "
                  f"params {built.total_params:,} ({built.trainable_params:,} trainable); "
                  f"logits mask: {built.logits_mask}")
    progress = _Progress()
    optimizer, scheduler = _optimisation(cfg, built.trainable, len(data.plan), progress)
    model, optimizer, scheduler = accelerator.prepare(built.model, optimizer, scheduler)
    unwrapped = accelerator.unwrap_model(model)
    _resume(run, unwrapped, optimizer, scheduler, progress, len(data.plan))
    best = _train_loop(run, model, unwrapped, optimizer, scheduler, built, data, progress)
    return _finish(run, model, unwrapped, built, data, progress, best)


def _build_model(cfg: TrainConfig, device: str) -> _Model:
    """The base model in fp32 (accelerate casts for mixed precision), with LoRA adapters for ``method=lora``."""
    import torch
    from transformers import AutoModelForCausalLM

    from garden_assets.llm.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.base_model)
    model = AutoModelForCausalLM.from_pretrained(cfg.base_model, dtype=torch.float32)
    model.config.use_cache = False
    total_params = _count(model.parameters())
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=cfg.resolved_lora_targets(device), task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return _Model(model, tokenizer, trainable, total_params, _count(trainable), supports_logits_mask(model))


def _load_data(cfg: TrainConfig, tokenizer, world: int) -> _Data:
    """Tokenized train/test examples (longer than max_length: dropped, counted) and the plan of steps."""
    train, dropped_train = load_examples(cfg.train_file, tokenizer, cfg.max_length)
    test, dropped_test = load_examples(cfg.test_file, tokenizer, cfg.max_length) if cfg.test_file else ([], 0)
    plan = plan_steps(train, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, world_size=world,
                      seed=cfg.seed, grouped=cfg.batching == "grouped", epochs=cfg.epochs,
                      max_steps=cfg.max_steps, max_train_tokens=cfg.max_train_tokens)
    return _Data(train, test, dropped_train, dropped_test, plan,
                 eval_subset=test[: cfg.eval_max_rows] if cfg.eval_max_rows else test,
                 pad_id=tokenizer.pad_token_id,
                 pad_multiple=8 if cfg.batching == "padded" else None)  # the dolly recipe pads to a multiple of 8


def _optimisation(cfg: TrainConfig, trainable: list, total_steps: int, progress: _Progress):
    """AdamW and its schedule: over the time budget when there is one (the step count is unknown up front)."""
    import torch
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.max_train_seconds is not None:  # warm up and decay over the budget
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda _: _budget_lr_factor(progress.budget_spent() / cfg.max_train_seconds,
                                                   cfg.warmup_ratio))
    else:
        scheduler = get_scheduler(cfg.lr_scheduler, optimizer,
                                  num_warmup_steps=int(cfg.warmup_ratio * total_steps),  # short runs: no step at lr 0
                                  num_training_steps=total_steps)
    return optimizer, scheduler


def _resume(run: _Run, unwrapped, optimizer, scheduler, progress: _Progress, total_steps: int) -> None:
    """Pick up the last complete checkpoint of this run (same fingerprint), or clear the directory for a fresh one."""
    cfg, out, accelerator, reporter = run.cfg, run.out, run.accelerator, run.reporter
    last = ckpt.last_checkpoint(out) if cfg.resume else None
    if last is not None:
        state = ckpt.read_state(last)
        if state.get("fingerprint") != run.fingerprint:
            reporter.warning(f"{last} belongs to a different run (data or settings changed): starting fresh")
            last = None
    if last is None:
        accelerator.wait_for_everyone()
        if run.main:  # a fresh run: stale checkpoints and log entries must not mix with it
            ckpt.clear(out)
            (out / LOG_FILE).unlink(missing_ok=True)
        accelerator.wait_for_everyone()
    else:
        if run.use_ds:
            accelerator.load_state(str(last / "accelerate"))
        else:
            ckpt.load_trainable(unwrapped, optimizer, scheduler, last)
        progress.step, progress.tokens, progress.train_time = state["step"], state["tokens"], state["train_time_s"]
        progress.eval_time = state.get("eval_time_s", 0.0)  # checkpoints written before evals counted in the budget
        progress.resumed_from = str(last)
        reporter.truncate_log(progress.step)
        reporter.info(f"resumed from {last} (step {progress.step}/{total_steps})")
    if run.main:  # from here on the directory holds an unfinished run
        (out / METRICS_FILE).unlink(missing_ok=True)


def _save_checkpoint(run: _Run, unwrapped, optimizer, scheduler, progress: _Progress, total_steps: int) -> None:
    """Every rank's state at ``progress.step`` into ``checkpoints/checkpoint-N`` (written to a tmp dir, committed)."""
    accelerator, out, step = run.accelerator, run.out, progress.step
    accelerator.wait_for_everyone()
    tmp = ckpt.checkpoints_dir(out) / f"checkpoint-{step}.tmp"
    if run.main:
        ckpt.begin(out, step)
    accelerator.wait_for_everyone()
    if run.use_ds:
        accelerator.save_state(str(tmp / "accelerate"))  # every rank writes its ZeRO shard
    elif run.main:
        ckpt.save_trainable(unwrapped, optimizer, scheduler, tmp)
    accelerator.wait_for_everyone()
    if run.main:
        state = {"step": step, "tokens": progress.tokens, "train_time_s": progress.train_time,
                 "eval_time_s": progress.eval_time,
                 "fingerprint": run.fingerprint, "total_steps": total_steps, "world_size": run.world}
        ckpt.commit(tmp, state, run.cfg.save_total_limit)
        run.reporter.info(f"checkpoint: step {step}")


def _train_loop(run: _Run, model, unwrapped, optimizer, scheduler, built: _Model, data: _Data,
                progress: _Progress) -> "_BestWeights":
    """The optimizer steps from ``progress.step`` on (until the plan or the time budget ends), with periodic
    evals, log entries and checkpoints; returns the best weights seen (by eval loss)."""
    import torch

    cfg, accelerator, reporter = run.cfg, run.accelerator, run.reporter
    world, rank, total_steps = run.world, accelerator.process_index, len(data.plan)
    model.train()
    best = _BestWeights(enabled=cfg.keep_best and not run.use_ds)  # ZeRO-3 shards the weights: publish the last ones
    for step in range(progress.step + 1, total_steps + 1):
        if cfg.max_train_seconds is not None and progress.budget_spent() >= cfg.max_train_seconds:
            reporter.info(f"time budget reached: {progress.train_time:.0f} s of training + {progress.eval_time:.0f} s "
                          f"of evals ≥ {cfg.max_train_seconds:.0f} s, stopping after step {step - 1} of {total_steps}")
            break
        sp = data.plan[step - 1]
        lr = scheduler.get_last_lr()[0]  # the rate this step trains with
        t0 = progress.step_start = time.perf_counter()
        local = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
        for micro in sp.micro[rank::world]:
            batch = _to_device(collate([data.train[i] for i in micro], data.pad_id, data.pad_multiple),
                               accelerator.device)
            with accelerator.accumulate(model):
                loss, count = loss_sum(model, batch, cfg.loss, built.logits_mask)
                # token-weighted mean over the whole step (all micro-batches, all ranks): accelerate/DeepSpeed
                # divide by grad_accum and DDP/ZeRO average over ranks, so undo both here
                accelerator.backward(loss * (world * cfg.grad_accum / sp.loss_tokens))
                if accelerator.sync_gradients:
                    if cfg.max_grad_norm and not run.use_ds:  # DeepSpeed clips from its config
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
            local += torch.stack([loss.detach().double(), count.double()])
        if world > 1:
            local = accelerator.reduce(local, reduction="sum")
        step_time = time.perf_counter() - t0
        progress.train_time += step_time
        progress.step_start = None
        progress.tokens += sp.tokens
        progress.step = step
        progress.last_loss = float(local[0] / local[1])
        if _STEP_SLEEP:  # test hook: slow steps down so a test can kill the run between checkpoints
            time.sleep(_STEP_SLEEP)

        entry: dict[str, Any] = {}
        if cfg.eval_steps and step % cfg.eval_steps == 0 and step < total_steps and data.eval_subset:
            t_eval = time.perf_counter()
            eval_loss = evaluate(model, data.eval_subset, batch_size=cfg.batch_size * 2, pad_id=data.pad_id,
                                 accelerator=accelerator, logits_mask=built.logits_mask)
            progress.eval_time += time.perf_counter() - t_eval
            progress.evaluated = (step, eval_loss)
            best.offer(eval_loss, step, unwrapped)
            entry["eval_loss"] = eval_loss
        if step % cfg.log_steps == 0 or step == total_steps or entry:
            entry = {"step": step, "epoch": sp.epoch, "train_loss": progress.last_loss, **entry,
                     "lr": lr, "tokens": progress.tokens, "step_tokens": sp.tokens,
                     "step_time_s": round(step_time, 4),
                     "tokens_per_s": progress.tokens / max(progress.train_time, 1e-9),
                     "elapsed_s": round(time.time() - run.started, 2)}
            reporter.record(entry)
        if cfg.save_steps and step % cfg.save_steps == 0 and step < total_steps:
            _save_checkpoint(run, unwrapped, optimizer, scheduler, progress, total_steps)
    return best


def _finish(run: _Run, model, unwrapped, built: _Model, data: _Data, progress: _Progress,
            best: "_BestWeights") -> TrainResult:
    """The final eval, the published weights (the best by eval loss, else the last), metrics.json (which marks
    the run finished) and the report to Dagster."""
    cfg, accelerator, reporter, out = run.cfg, run.accelerator, run.reporter, run.out
    steps_done, total_steps = progress.step, len(data.plan)
    final_eval = None
    if data.eval_subset:
        # a time budget often ends right after a periodic eval (its seconds count): those weights are not evaluated
        # twice (seen: 38 s of a 300 s CPU run)
        if progress.evaluated and progress.evaluated[0] == steps_done:
            final_eval = progress.evaluated[1]
            reporter.info(f"final eval: step {steps_done}'s periodic eval (the weights have not changed since)")
        else:
            final_eval = evaluate(model, data.eval_subset, batch_size=cfg.batch_size * 2, pad_id=data.pad_id,
                                  accelerator=accelerator, logits_mask=built.logits_mask)
        best.offer(final_eval, steps_done, unwrapped)
        reporter.record({"step": steps_done, "eval_loss": final_eval, "final": True})
    published_step = best.restore(unwrapped) or steps_done
    if published_step != steps_done:
        reporter.info(f"publishing the weights of step {published_step} (eval loss {best.loss:.4f}; "
                      f"last step {steps_done}: {final_eval:.4f})")
    model_dir, adapter_dir = _save_outputs(cfg, accelerator, model, unwrapped, built.tokenizer, run.use_ds)
    tokens, train_time = progress.tokens, progress.train_time
    metrics = {
        "method": cfg.method, "device": run.device, "precision": run.precision, "num_processes": run.world,
        "deepspeed": run.use_ds, "steps": steps_done, "planned_steps": total_steps, "published_step": published_step,
        "best_eval_loss": best.loss if best.step is not None else final_eval, "train_tokens": tokens,
        "train_time_s": round(train_time, 3), "eval_time_s": round(progress.eval_time, 3),
        "tokens_per_s": tokens / max(train_time, 1e-9), "train_loss": progress.last_loss, "eval_loss": final_eval,
        "train_rows": len(data.train), "test_rows": len(data.test),
        "dropped_train": data.dropped_train, "dropped_test": data.dropped_test,
        "total_params": built.total_params, "trainable_params": built.trainable_params,
        # training FLOPs/token, the MFU convention: 6N full; 4N LoRA (frozen weights get no weight gradients)
        "model_flops_per_token": (6 if cfg.method == "full" else 4) * built.total_params,
        "model_dir": model_dir.name, "adapter_dir": adapter_dir.name if adapter_dir else None,  # relative: movable
        "resumed_from": progress.resumed_from, "wall_time_s": round(time.time() - run.started, 2),
        "batching": cfg.batching, "loss": cfg.loss, "fingerprint": run.fingerprint, "extra": cfg.extra,
    }
    if run.main:
        write_json_atomic(out / METRICS_FILE, metrics)  # marks the run finished; checkpoints are no longer needed
        ckpt.clear(out)
        reporter.info(f"done: {steps_done} steps, {tokens} tokens, {metrics['tokens_per_s']:.1f} tokens/s, "
                      f"eval loss {final_eval}")
    reporter.finish(metrics)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(out, model_dir, adapter_dir, out / LOG_FILE, metrics)


def _save_outputs(cfg: TrainConfig, accelerator, model, unwrapped, tokenizer, use_ds: bool):
    """``adapter/`` (LoRA) and ``model/`` (merged or full weights), each written to a tmp dir and swapped in."""
    import torch
    from transformers import AutoModelForCausalLM

    main = accelerator.is_main_process
    out = Path(cfg.output_dir)
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)  # a collective under ZeRO-3 (gathers 16-bit weights)
    model_dir, adapter_dir = out / "model", None
    if main:
        if cfg.method == "lora":
            adapter_dir = out / "adapter"
            tmp = out / ".adapter.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            unwrapped.save_pretrained(tmp, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
            publish_dir(tmp, adapter_dir)
            if cfg.merge:
                if use_ds:  # ZeRO-3 holds shards: merge into a freshly loaded, whole base instead
                    from peft import PeftModel

                    with _without_zero3_init():
                        base = AutoModelForCausalLM.from_pretrained(cfg.base_model, dtype=torch.float32)
                        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
                else:
                    merged = unwrapped.merge_and_unload()
                _save_model(merged, tokenizer, model_dir)
        else:
            _save_model(unwrapped, tokenizer, model_dir, state_dict=state_dict)
    accelerator.wait_for_everyone()
    if cfg.method == "lora":
        adapter_dir = out / "adapter"
        if not cfg.merge:
            model_dir = adapter_dir
    return model_dir, adapter_dir


@contextlib.contextmanager
def _without_zero3_init():
    """Build ordinary (unpartitioned) models while a ZeRO-3 config is registered with transformers. transformers
    has no public switch for this: it keys zero.Init on a module-level weak reference, which we park meanwhile."""
    from transformers.integrations import deepspeed as hf_ds

    ref = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = ref


def _save_model(model, tokenizer, dest: Path, state_dict=None) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.config.use_cache = True
    model.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    publish_dir(tmp, dest)
