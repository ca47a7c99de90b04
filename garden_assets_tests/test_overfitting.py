from garden_assets.training.overfitting import overfitting_signal


def log(train, evals, every=2):
    out, step = [], 0
    for i, e in enumerate(evals):
        for t in train[i * every : (i + 1) * every]:
            step += 1
            out.append({"step": step, "train_loss": t})
        out.append({"step": step, "eval_loss": e})
    return out


def test_rising_eval_with_falling_train_is_overfitting():
    sig = overfitting_signal(log([3, 2.8, 2.5, 2.3, 2.0, 1.8, 1.5, 1.2, 1.0, 0.8], [2.6, 2.4, 2.5, 2.7, 2.9]))
    assert sig["overfitting"] and sig["eval_loss_last"] == 2.9


def test_healthy_or_short_runs_are_not():
    assert not overfitting_signal(log([3, 2.8, 2.5, 2.3, 2.0, 1.8, 1.7, 1.6], [2.6, 2.4, 2.3, 2.2]))["overfitting"]
    assert not overfitting_signal(log([3, 2, 1], [2.0, 2.1]))["overfitting"]  # too few evaluations
    # both rising: diverging, not overfitting
    assert not overfitting_signal(log([1, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9], [1.0, 1.1, 1.2, 1.3, 1.4]))["overfitting"]
