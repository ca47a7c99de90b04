"""evaluation_answers through Dagster: four variants, sweeps, the WARN check, reuse, and clear failures.

Real pipeline on the bundled sample (MiniLM index in LanceDB, trainer through Pipes) with a tiny random Gemma-
architecture model so it runs in seconds; the packaged Gemma answers in test_ask_gemma.py (slow).
"""

import dagster as dg
import polars as pl
import pytest

from garden_assets.defs import evaluation, finetune, index, posts
from garden_assets.defs.resources import GardenPaths
from garden_assets.llm.rag import NOT_FOUND, RetrievalSetting
from garden_assets.settings import Layout
from .tiny_models import tiny_random_model

from .dagster_env import PARTITION, sample_env

ASSETS = [posts.raw_posts, posts.clean_posts, posts.qa_pairs, index.qa_index, finetune.base_model,
          finetune.finetune_dataset, finetune.tuned_model, evaluation.evaluation_answers]
UPSTREAM = {"ops": {"tuned_model": {"config": {"max_train_tokens": 2000, "eval_steps": 5, "save_steps": 5}},
                    "finetune_dataset": {"config": {"max_length": 384}}}}


def eval_config(**config):
    return {"ops": {"evaluation_answers": {"config": {"questions": 3, "generation": {"max_new_tokens": 6}, **config}}}}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluation")
    instance, resources = sample_env(tmp, base_model=str(tiny_random_model(tmp / "tiny")))
    assert dg.materialize(ASSETS, selection=ASSETS[:2], partition_key=PARTITION, instance=instance,
                          resources=resources).success
    assert dg.materialize(ASSETS, selection=ASSETS[2:7], instance=instance, resources=resources,
                          run_config=UPSTREAM).success
    return instance, resources, tmp / "home"


def materialize(env, config, **kw):
    instance, resources, _ = env
    return dg.materialize(ASSETS, selection=[evaluation.evaluation_answers], instance=instance, resources=resources,
                          run_config=config, **kw)


def test_four_variants_sweeps_check_and_reuse(env):
    config = eval_config(generation_sweep=[{"max_new_tokens": 4, "repetition_penalty": 1.3}, {"num_beams": 2}],
                         retrieval_sweep=[{"k": 1}, {"k": 2, "mode": "vector"}, {"quote_unsupported": False},
                                          {"min_similarity": 0.99}])
    result = materialize(env, config)
    assert result.success
    rows = pl.read_parquet(env[2] / "storage" / "evaluation_answers.parquet")
    assert rows.height == 3 * (6 + 2 + 4)
    main = rows.filter(pl.col("sweep") == "main")
    assert sorted(main["variant"].unique()) == ["base", "base+rag", "reranked", "retrieved", "tuned", "tuned+rag"]
    assert set(rows.columns) >= {"answer", "sources", "rouge_l", "token_f1", "latency_s", "new_tokens", "ended",
                                 "repeated_4grams", "faithfulness", "quoted", "declined", "model_answer"}
    assert rows["rouge_l"].is_between(0, 1).all() and rows["token_f1"].is_between(0, 1).all()
    rag = rows.filter(pl.col("variant").str.ends_with("+rag") | pl.col("variant").is_in(["retrieved", "reranked"]))
    no_rag = rows.filter(pl.col("variant").is_in(["base", "tuned"]))
    answered = rag.filter(~pl.col("declined"))  # withheld (the floor sweep row below): nothing cited
    assert (answered["sources"].list.len() > 0).all() and (no_rag["sources"].list.len() == 0).all()
    assert no_rag["faithfulness"].is_null().all()  # nothing cited, nothing to be faithful to
    # only a model's RAG answer can be replaced by its source, and then the model's text is kept beside it
    assert not rows.filter(~pl.col("variant").str.ends_with("+rag"))["quoted"].any()
    assert rows["model_answer"].is_not_null().to_list() == rows["quoted"].to_list()
    models = rows.filter(~pl.col("variant").is_in(["retrieved", "reranked"]))
    assert rows.filter(pl.col("variant").is_in(["retrieved", "reranked"]))["model_token_f1"].is_null().all()
    unquoted = models.filter(~pl.col("quoted"))  # not quoted: the model's own scores are the answer's
    assert unquoted["model_token_f1"].to_list() == unquoted["token_f1"].to_list()
    # the anchor pastes its one source: it ends, does not loop, and its source supports all of it
    pasted = main.filter(pl.col("variant").is_in(["retrieved", "reranked"]))
    assert (pasted["sources"].list.len() == 1).all() and pasted["ended"].all() and (pasted["new_tokens"] == 0).all()
    assert pasted["faithfulness"].drop_nulls().eq(1.0).all()
    # 6 new tokens from a random tiny model never reach an end: every model answer is marked as cut off
    assert not main.filter(~pl.col("variant").is_in(["retrieved", "reranked"]))["ended"].any()
    # a held-out question never retrieves its own answers (its references)
    pairs = pl.read_parquet(env[2] / "storage" / "qa_pairs.parquet")
    own = dict(pairs.group_by("question_id").agg("answer_id").iter_rows())
    for qid, ids in rag.select("question_id", "source_ids").iter_rows():
        assert not set(ids) & set(own[qid])
    unguarded = RetrievalSetting(quote_unsupported=False).label()
    strict = RetrievalSetting(min_similarity=0.99).label()
    assert sorted(rows.filter(pl.col("sweep") == "retrieval")["retrieval"].unique()) == sorted([
        "k=1, question+answer, hybrid", "k=2, question+answer, vector", unguarded, strict])
    # a floor nothing reaches: every answer withheld (no model ran, nothing cited); the main run withholds none here
    withheld = rows.filter(pl.col("retrieval") == strict)
    assert withheld["declined"].all() and (withheld["answer"] == NOT_FOUND).all() and (withheld["new_tokens"] == 0).all()
    assert (withheld["sources"].list.len() == 0).all() and not rows.filter(pl.col("retrieval") != strict)["declined"].any()
    assert unguarded.endswith(", quote_unsupported=False")
    assert not rows.filter(pl.col("retrieval") == unguarded)["quoted"].any()
    assert rows.filter((pl.col("sweep") == "retrieval") & pl.col("retrieval").str.starts_with("k=1"))["sources"].list.len().max() == 1
    meta = result.asset_materializations_for_node("evaluation_answers")[0].metadata
    table = meta["comparison"].value
    for variant in ("| retrieved ", "| reranked ", "| base ", "| base+rag ", "| tuned ", "| tuned+rag "):
        assert variant in table
    for column in ("rouge_l", "token_f1", "ended", "quoted", "repeated_4grams", "faithfulness", "data:image/png"):
        assert column in table
    assert "max_new_tokens=4, repetition_penalty=1.3" in meta["generation_sweep"].value
    assert "max_new_tokens=6, num_beams=2" in meta["generation_sweep"].value  # a sweep row keeps the main settings
    assert "k=2, question+answer, vector" in meta["retrieval_sweep"].value
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert sorted(checks) == ["relevance_floor", "tuned_rag_grounded", "tuned_rag_vs_base_rag", "tuned_rag_vs_retrieved"]
    assert checks["relevance_floor"].passed  # the main run withholds none (the strict floor is a sweep row)
    means = dict(main.group_by("variant").agg(pl.col("token_f1").mean()).rows())
    for name, anchor in (("tuned_rag_vs_base_rag", "base+rag"), ("tuned_rag_vs_retrieved", "retrieved")):
        assert checks[name].severity == dg.AssetCheckSeverity.WARN
        assert checks[name].passed == (round(means["tuned+rag"], 4) >= round(means[anchor], 4))
    grounded = checks["tuned_rag_grounded"]
    quoted = main.filter(pl.col("variant") == "tuned+rag")["quoted"].mean()
    assert grounded.passed == (quoted <= evaluation.MAX_QUOTED)
    steps = max(r["step"] for r in finetune.read_training_log(Layout(env[2]).tuned))
    assert grounded.metadata["training_steps"].value == steps > 0
    assert meta["reused"].value is False
    # same inputs and config: the answers are reused, not generated again
    again = materialize(env, config)
    assert again.asset_materializations_for_node("evaluation_answers")[0].metadata["reused"].value is True
    assert pl.read_parquet(env[2] / "storage" / "evaluation_answers.parquet").equals(rows)


def test_grounded_check_warns_when_most_tuned_rag_answers_were_quoted():
    main = pl.DataFrame({"variant": ["retrieved", "tuned+rag"], "quoted": [0.0, 0.8]})
    log = [{"step": 1, "train_loss": 2.0}, {"step": 6, "eval_loss": 3.1}]
    warned = evaluation._grounded_check(main, log)
    assert not warned.passed and warned.severity == dg.AssetCheckSeverity.WARN
    assert "80% of tuned+RAG answers" in warned.description and "trained 6 steps" in warned.description
    assert evaluation._grounded_check(main.with_columns(pl.lit(0.1).alias("quoted")), log).passed
    assert evaluation._grounded_check(main.filter(pl.col("variant") == "retrieved"), []).passed  # not evaluated


def test_a_floor_that_withholds_held_out_questions_warns(env):
    """The main run's floor withholds every held-out question (no model variant: nothing to load): the answers are
    written, and the relevance_floor check warns and says what to run; the scores of the other checks still come."""
    result = materialize(env, eval_config(variants=["retrieved", "reranked"], retrieval={"min_similarity": 0.99}))
    assert result.success
    rows = pl.read_parquet(env[2] / "storage" / "evaluation_answers.parquet")
    assert rows["declined"].all()
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    floor = checks["relevance_floor"]
    assert not floor.passed and floor.severity == dg.AssetCheckSeverity.WARN
    assert "100% of held-out questions" in floor.description and "benchmarks/relevance_floor.py" in floor.description
    assert floor.metadata["min_similarity"].value == 0.99


def test_bad_config_and_missing_inputs_fail_clearly_and_keep_old_answers(env, tmp_path):
    assert materialize(env, eval_config(variants=["base"])).success
    before = (env[2] / "storage" / "evaluation_answers.parquet").read_bytes()

    def failure(config, resources=None):
        instance, base_resources, _ = env
        result = dg.materialize(ASSETS, selection=[evaluation.evaluation_answers], instance=instance,
                                resources=resources or base_resources, run_config=config, raise_on_error=False)
        assert not result.success
        return [e for e in result.all_events if e.is_step_failure][0].step_failure_data.user_failure_data.description

    assert "top_p must be in (0, 1]" in failure(eval_config(generation={"top_p": 2.0}))
    assert "variant must be one of" in failure(eval_config(variants=["tuned+magic"]))
    assert "mode must be one of" in failure(eval_config(retrieval_sweep=[{"mode": "semantic"}]))
    assert "materialize qa_index (with config key: answer)" in failure(eval_config(retrieval_sweep=[{"key": "answer"}]))
    elsewhere = {**env[1], "paths": GardenPaths(home=str(tmp_path / "empty"), drops=str(tmp_path))}
    assert "materialize finetune_dataset" in failure(eval_config(), elsewhere)
    assert (env[2] / "storage" / "evaluation_answers.parquet").read_bytes() == before


def test_run_config_mirrors_generation_settings():
    """The Launchpad's typed config and the library's settings cannot drift apart (same fields, same defaults)."""
    import dataclasses

    from garden_assets.llm.generate import GenerationSettings

    fields = {f.name: f.default for f in dataclasses.fields(GenerationSettings)}
    assert evaluation.Generation().model_dump() == fields
    assert set(evaluation.GenerationChange.model_fields) == set(fields)
