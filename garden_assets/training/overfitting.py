"""The talk's "serious overfitting" signal, read from a training log (no dagster)."""

from __future__ import annotations


def overfitting_signal(log: list[dict], patience: int = 3) -> dict:
    """Overfitting = eval loss rose at each of the last ``patience`` evaluations while train loss fell.

    ``log``: ``training_log.jsonl`` entries (``step``, ``train_loss`` and/or ``eval_loss``). Train loss is taken
    as the mean of the logged steps since the previous evaluation, so one noisy batch does not decide it.
    """
    evals, window, train_means = [], [], []
    for entry in sorted(log, key=lambda e: e.get("step", 0)):
        if entry.get("train_loss") is not None:
            window.append(entry["train_loss"])
        if entry.get("eval_loss") is not None:
            evals.append(entry["eval_loss"])
            train_means.append(sum(window) / len(window) if window else None)
            window = []
    result = {"evaluations": len(evals), "patience": patience, "overfitting": False}
    if len(evals) <= patience:
        return result
    recent, trains = evals[-patience - 1 :], train_means[-patience - 1 :]
    eval_rising = all(b > a for a, b in zip(recent, recent[1:]))
    train_falling = None not in trains and trains[-1] < trains[0]
    result.update(
        overfitting=bool(eval_rising and train_falling),
        eval_loss_first=recent[0], eval_loss_last=recent[-1],
        train_loss_first=trains[0] if trains[0] is not None else float("nan"),
        train_loss_last=trains[-1] if trains[-1] is not None else float("nan"),
    )
    return result
