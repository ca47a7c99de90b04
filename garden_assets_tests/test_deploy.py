"""The deployment files in deploy/ checked with Dagster's and dagster-k8s's own code.

- deploy/dagster.yaml loads through Dagster's instance schema and, against a real PostgreSQL
  (``source .ci/postgres.sh`` exports GARDEN_TEST_PG_DSN), stores runs, materializations and pool slots there.
- deploy/k8s/*.yaml: the run launcher / instance sections the Helm chart renders from them pass dagster-k8s's
  K8sRunLauncher schema and build a working instance; the k8s_job_executor config passes the executor schema;
  the step pod dagster-k8s would create for each heavy asset under the gpu-k8s profile carries its GPUs.

No cluster is contacted: K8sRunLauncher reads a dummy kubeconfig; Jobs are built, never submitted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote, urlparse

import dagster as dg
import pytest
import yaml
from dagster._core.instance.config import dagster_instance_config

from garden_assets.compute import HEAVY_ASSETS, ComputeSpec, load_profile, read_profile

from .conftest import ROOT, a, q, write_dump

DEPLOY = ROOT / "deploy"
VALUES = DEPLOY / "k8s" / "values.yaml"
USER_CODE_VALUES = DEPLOY / "k8s" / "user-code-values.yaml"
PG_VARS = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB")
# Heavy asset (compute.HEAVY_ASSETS) → the asset (= op = step) it runs in (docs/deploy.md, DESIGN.md).
STEP_OF = {"embedding": "qa_index", "training": "tuned_model", "generation": "evaluation_answers"}
RELEASE, CODE_RELEASE, NAMESPACE = "garden-dagster", "garden-code", "garden"


def load_yaml(path: Path):
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def instance_dir(tmp_path: Path, source: Path, name: str = "dagster_home") -> Path:
    """A DAGSTER_HOME holding ``source`` as its dagster.yaml (local artifacts go there, not into deploy/)."""
    home = tmp_path / name
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, home / "dagster.yaml")
    return home


# -- the instance config files, schema only (no server needed) ------------------------------------------------
def test_dagster_yaml_passes_the_instance_schema(tmp_path, monkeypatch):
    for var in PG_VARS:
        monkeypatch.setenv(var, "5432" if var.endswith("PORT") else "x")
    config, _ = dagster_instance_config(str(instance_dir(tmp_path, DEPLOY / "dagster.yaml")))
    pg = config["storage"]["postgres"]["postgres_db"]
    assert {pg[k]["env"] for k in ("hostname", "port", "username", "password", "db_name")} == set(PG_VARS)
    assert pg["scheme"] == "postgresql+psycopg2"  # SQLAlchemy >= 2.1 would pick psycopg 3 for postgresql://
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["concurrency"]["runs"]["max_concurrent_runs"] > 0
    assert config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert config["run_monitoring"]["enabled"] and config["run_retries"]["enabled"]
    assert config["run_retries"]["max_retries"] > 0
    # DefaultRunLauncher cannot resume runs: Dagster refuses max_resume_run_attempts > 0 with it.
    assert config["run_monitoring"]["max_resume_run_attempts"] == 0
    assert config["telemetry"]["enabled"] is False


def test_every_profile_pool_is_documented():
    """Pools are created on first use with default_limit; the docs must name every pool a profile uses."""
    pools = {
        entry["pool"]
        for name in ("cpu-local", "gpu-single", "gpu-k8s")
        for entry in read_profile(name).values()
        if entry.get("pool")
    }
    assert pools >= {"gpu"}
    docs = (DEPLOY / "dagster.yaml").read_text() + VALUES.read_text()
    for pool in pools:
        assert f"concurrency set {pool} " in docs, f"pool {pool!r} has no `dagster instance concurrency set` line"


def test_local_yaml_builds_an_instance_and_limits_pools(tmp_path):
    """deploy/dagster.local.yaml (SQLite) for `make ui`: an unconfigured pool starts at default_limit 1."""
    instance = dg.DagsterInstance.from_config(str(instance_dir(tmp_path, DEPLOY / "dagster.local.yaml")))
    try:
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 1
        assert not instance.telemetry_enabled
        _materialize_in_pool(instance, f"gpu-test-{uuid.uuid4().hex[:8]}")
    finally:
        instance.dispose()


def _materialize_in_pool(instance: dg.DagsterInstance, pool: str) -> None:
    @dg.asset(name=f"pooled_{pool.replace('-', '_')}", pool=pool)
    def pooled() -> int:
        return 1

    storage = instance.event_log_storage
    try:
        result = dg.materialize([pooled], instance=instance, resources={"io_manager": dg.mem_io_manager})
        assert result.success
        info = storage.get_concurrency_info(pool)
        assert info.slot_count == 1 and info.limit == 1, "pool did not get default_limit from the yaml"
        assert info.claimed_slots == [] and info.pending_steps == []  # the step claimed and released its slot
    finally:
        storage.delete_concurrency_limit(pool)


# -- deploy/dagster.yaml on a real PostgreSQL -----------------------------------------------------------------
def _pg_settings() -> dict[str, str]:
    dsn = os.environ.get("GARDEN_TEST_PG_DSN")
    if dsn:
        url = urlparse(dsn)
        return {
            "DAGSTER_PG_HOST": url.hostname or "127.0.0.1",
            "DAGSTER_PG_PORT": str(url.port or 5432),
            "DAGSTER_PG_USER": unquote(url.username or ""),
            "DAGSTER_PG_PASSWORD": unquote(url.password or ""),
            "DAGSTER_PG_DB": url.path.lstrip("/"),
        }
    if os.environ.get("DAGSTER_PG_HOST"):
        defaults = {"DAGSTER_PG_PORT": "5432", "DAGSTER_PG_PASSWORD": ""}
        return {var: os.environ.get(var, defaults.get(var, "")) for var in PG_VARS}
    pytest.skip("no PostgreSQL configured: `source .ci/postgres.sh` (exports GARDEN_TEST_PG_DSN) to run this test")


@pytest.fixture(scope="module")
def pg_env():
    """DAGSTER_PG_* for the test server. Configured but unreachable is a failure, not a skip."""
    settings = _pg_settings()
    pytest.importorskip("dagster_postgres", reason="dagster-postgres is not installed (the `deploy` extra)")
    import psycopg2

    try:
        psycopg2.connect(
            host=settings["DAGSTER_PG_HOST"], port=int(settings["DAGSTER_PG_PORT"]),
            user=settings["DAGSTER_PG_USER"], password=settings["DAGSTER_PG_PASSWORD"],
            dbname=settings["DAGSTER_PG_DB"], connect_timeout=5,
        ).close()
    except psycopg2.OperationalError as e:
        pytest.fail(
            f"PostgreSQL configured ({settings['DAGSTER_PG_USER']}@{settings['DAGSTER_PG_HOST']}:"
            f"{settings['DAGSTER_PG_PORT']}/{settings['DAGSTER_PG_DB']}) but not reachable: {e}".strip()
        )
    with pytest.MonkeyPatch.context() as mp:
        for var, value in settings.items():
            mp.setenv(var, value)
        yield settings


@pytest.fixture(scope="module")
def pg_home(pg_env, tmp_path_factory):
    return instance_dir(tmp_path_factory.mktemp("pg"), DEPLOY / "dagster.yaml")


@pytest.fixture(scope="module")
def pg_instance(pg_home):
    instance = dg.DagsterInstance.from_config(str(pg_home))
    yield instance
    instance.dispose()


def test_postgres_instance_has_the_production_settings(pg_instance):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    assert isinstance(pg_instance.run_storage, PostgresRunStorage)
    assert isinstance(pg_instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(pg_instance.schedule_storage, PostgresScheduleStorage)
    assert type(pg_instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    queue = pg_instance.get_concurrency_config().run_queue_config
    assert queue.max_concurrent_runs == 4
    assert {"key": "dagster/sensor_name", "value": "drops_sensor", "limit": 2} in queue.tag_concurrency_limits
    assert pg_instance.run_monitoring_enabled and pg_instance.run_retries_enabled
    assert pg_instance.run_retries_max_retries == 2 and not pg_instance.run_retries_retry_on_asset_or_op_failure
    assert pg_instance.event_log_storage.supports_global_concurrency_limits


def test_ingest_assets_materialize_into_postgres(pg_instance, pg_home, tmp_path):
    """The project's raw_posts + clean_posts on a temp drop, with runs and events in PostgreSQL."""
    from garden_assets.defs import posts
    from garden_assets.defs.resources import AtomicParquetIOManager, GardenPaths

    drops = tmp_path / "drops"
    key = f"pg-{uuid.uuid4().hex[:8]}"  # the database is shared between test runs: unique partition
    write_dump(drops / key / "Posts.xml", [q(1, accepted=2), a(2, 1), a(3, 1, score=9)])
    pg_instance.add_dynamic_partitions("drops", [key])
    result = dg.materialize(
        [posts.raw_posts, posts.clean_posts, posts.qa_pairs],
        selection=dg.AssetSelection.assets(posts.raw_posts, posts.clean_posts),
        partition_key=key,
        instance=pg_instance,
        resources={
            "paths": GardenPaths(home=str(tmp_path / "home"), drops=str(drops)),
            "io_manager": AtomicParquetIOManager(base_dir=str(tmp_path / "home" / "storage")),
        },
    )
    assert result.success
    assert all(check.passed for check in result.get_asset_check_evaluations())
    # A second instance built from the same yaml sees the run and the partitioned materialization: they are
    # in PostgreSQL, not in the first instance's memory.
    other = dg.DagsterInstance.from_config(str(pg_home))
    try:
        assert other.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.SUCCESS
        event = other.get_latest_materialization_event(dg.AssetKey("clean_posts"))
        assert event is not None
        keys = other.get_materialized_partitions(dg.AssetKey("clean_posts"))
        assert key in keys
    finally:
        other.delete_run(result.run_id)
        other.delete_dynamic_partition("drops", key)
        other.dispose()


def test_gpu_pool_on_postgres_default_and_cli_limit(pg_instance, pg_home):
    """Pool slots live in PostgreSQL: default_limit on first use, then the documented CLI sets a limit."""
    pool = f"gpu-test-{uuid.uuid4().hex[:8]}"
    _materialize_in_pool(pg_instance, pool)
    env = {**os.environ, "DAGSTER_HOME": str(pg_home)}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "dagster", "instance", "concurrency", "set", pool, "2"],
            env=env, capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr
        info = pg_instance.event_log_storage.get_concurrency_info(pool)
        assert info.slot_count == 2 and info.limit == 2
    finally:
        pg_instance.event_log_storage.delete_concurrency_limit(pool)


# -- Kubernetes: what the Helm charts render, checked by dagster-k8s ------------------------------------------
@pytest.fixture(scope="module")
def k8s():
    return pytest.importorskip("dagster_k8s", reason="dagster-k8s is not installed (the `deploy` extra)")


@pytest.fixture(scope="module")
def values():
    return load_yaml(VALUES)


@pytest.fixture(scope="module")
def user_code():
    return load_yaml(USER_CODE_VALUES)


@pytest.fixture(scope="module")
def deployment(user_code):
    (only,) = user_code["deployments"]
    return only


@pytest.fixture(scope="module")
def kubeconfig(tmp_path_factory) -> str:
    """A kubeconfig that parses; no client call is ever made with it."""
    path = tmp_path_factory.mktemp("kube") / "config"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "test", "user": {"token": "not-a-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": NAMESPACE}}],
    }))
    return str(path)


def _env_of(deployment) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in deployment["env"]}


def chart_run_launcher_config(values) -> dict:
    """run_launcher.config as the dagster chart renders it (templates/helpers/instance/_run-launcher.tpl)."""
    c = values["runLauncher"]["config"]["k8sRunLauncher"]
    known = {"imagePullPolicy", "loadInclusterConfig", "kubeconfigFile", "jobNamespace", "envConfigMaps",
             "envSecrets", "envVars", "volumeMounts", "volumes", "labels", "resources", "failPodOnRunFailure",
             "schedulerName", "securityContext", "runK8sConfig", "image"}
    assert set(c) <= known, f"teach chart_run_launcher_config about {set(c) - known}"
    g = values["global"]
    cfg = {
        "load_incluster_config": c["loadInclusterConfig"],
        "job_namespace": c.get("jobNamespace") or NAMESPACE,
        "image_pull_policy": c["imagePullPolicy"],
        "service_account_name": g["serviceAccountName"],
        "dagster_home": g["dagsterHome"],
        "instance_config_map": f"{RELEASE}-instance",
        "postgres_password_secret": g["postgresqlSecretName"],
    }
    simple = {"kubeconfigFile": "kubeconfig_file", "envVars": "env_vars", "volumeMounts": "volume_mounts",
              "volumes": "volumes", "labels": "labels", "resources": "resources",
              "schedulerName": "scheduler_name", "securityContext": "security_context"}
    for key, name in simple.items():
        if c.get(key):
            cfg[name] = c[key]
    for key, name in (("envConfigMaps", "env_config_maps"), ("envSecrets", "env_secrets")):
        names = [x["name"] for x in c.get(key) or [] if "name" in x]
        if names:
            cfg[name] = names
    if c.get("failPodOnRunFailure"):
        cfg["fail_pod_on_run_failure"] = True
    if c.get("runK8sConfig"):
        run = c["runK8sConfig"]
        fields = {"containerConfig": "container_config", "podSpecConfig": "pod_spec_config",
                  "podTemplateSpecMetadata": "pod_template_spec_metadata", "jobSpecConfig": "job_spec_config",
                  "jobMetadata": "job_metadata"}
        assert set(run) <= set(fields)
        cfg["run_k8s_config"] = {fields[k]: v for k, v in run.items() if v}
    return cfg


def chart_instance_yaml(values, storage: dict) -> dict:
    """The parts of the chart's dagster.yaml (templates/configmap-instance.yaml) these values control."""
    daemon = values["dagsterDaemon"]
    qrc = {k: v for k, v in daemon["runCoordinator"]["config"]["queuedRunCoordinator"].items() if v is not None}
    camel = {"maxConcurrentRuns": "max_concurrent_runs", "tagConcurrencyLimits": "tag_concurrency_limits",
             "dequeueIntervalSeconds": "dequeue_interval_seconds", "dequeueUseThreads": "dequeue_use_threads",
             "dequeueNumWorkers": "dequeue_num_workers"}
    assert set(qrc) <= set(camel)
    mon = daemon["runMonitoring"]
    conc = values["concurrency"]
    pools, runs = conc["pools"], conc["runs"]
    rendered = {
        **storage,
        "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher",
                         "config": chart_run_launcher_config(values)},
        "run_coordinator": {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator",
                            "config": {camel[k]: v for k, v in qrc.items()}},
        "run_monitoring": {
            "enabled": mon["enabled"], "start_timeout_seconds": mon["startTimeoutSeconds"],
            "cancel_timeout_seconds": mon["cancelTimeoutSeconds"],
            "max_resume_run_attempts": mon["maxResumeRunAttempts"],
            "poll_interval_seconds": mon["pollIntervalSeconds"],
            "free_slots_after_run_end_seconds": mon["freeSlotsAfterRunEndSeconds"],
        },
        "telemetry": {"enabled": values["telemetry"]["enabled"]},
        "concurrency": {
            "pools": {"default_limit": pools["defaultLimit"], "granularity": pools["granularity"],
                      "op_granularity_run_buffer": pools["opGranularityRunBuffer"]},
            "runs": {"max_concurrent_runs": runs["maxConcurrentRuns"],
                     "tag_concurrency_limits": runs["tagConcurrencyLimits"]},
        } if conc["enabled"] else {},
    }
    if daemon["runRetries"]["enabled"]:
        rendered["run_retries"] = {"enabled": True, "max_retries": daemon["runRetries"]["maxRetries"]}
    rendered.update(values.get("additionalInstanceConfig") or {})
    return rendered


def chart_container_context(user_code, deployment) -> dict:
    """What the user-deployments chart passes as DAGSTER_CLI_API_GRPC_CONTAINER_CONTEXT (its _helpers.tpl)."""
    fullname = f"{CODE_RELEASE}-dagster-user-deployments"
    k8s = {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_config_maps": [f"{fullname}-{deployment['name']}-user-env",
                            *[c["name"] for c in deployment.get("envConfigMaps") or []]],
        "namespace": NAMESPACE,
        "service_account_name": user_code["global"]["serviceAccountName"],
    }
    if deployment.get("envSecrets"):
        k8s["env_secrets"] = [s["name"] for s in deployment["envSecrets"]]
    for key, name in (("volumeMounts", "volume_mounts"), ("volumes", "volumes"), ("labels", "labels"),
                      ("resources", "resources"), ("schedulerName", "scheduler_name")):
        if deployment.get(key):
            k8s[name] = deployment[key]
    if isinstance(deployment.get("env"), list):
        k8s["env"] = deployment["env"]
    return {"k8s": k8s}


def executor_config(deployment) -> dict:
    return yaml.safe_load(_env_of(deployment)["GARDEN_K8S_EXECUTOR_CONFIG"])


def test_run_launcher_config_passes_dagster_k8s_schema(k8s, values):
    from dagster._config import validate_config

    cfg = chart_run_launcher_config(values)
    result = validate_config(k8s.K8sRunLauncher.config_type(), cfg)
    assert result.success, [e.message for e in result.errors]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["dagsterDaemon"]["enabled"] and values["dagsterDaemon"]["runCoordinator"]["enabled"]
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert values["postgresql"]["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
    # The chart fails when run limits are set in both places; they belong in concurrency.runs.
    assert "maxConcurrentRuns" not in values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    # A memory limit on run pods would be inherited by (and cap) every step pod: requests only.
    assert "limits" not in cfg.get("resources", {})


def test_chart_instance_builds_with_k8s_launcher(k8s, values, kubeconfig, tmp_path, request):
    """The chart's dagster.yaml for these values: Dagster accepts it (resume needs K8sRunLauncher) and
    builds the instance. Storage is the chart's Postgres block pointed at the test server when there is one."""
    pg = values["postgresql"]
    if os.environ.get("GARDEN_TEST_PG_DSN") or os.environ.get("DAGSTER_PG_HOST"):
        settings = request.getfixturevalue("pg_env")
        postgres_db = {
            "username": settings["DAGSTER_PG_USER"], "password": {"env": "DAGSTER_PG_PASSWORD"},
            "hostname": settings["DAGSTER_PG_HOST"], "db_name": settings["DAGSTER_PG_DB"],
            "port": int(settings["DAGSTER_PG_PORT"]), "params": pg["postgresqlParams"],
            "scheme": pg["postgresqlScheme"],
        }
        storage = {
            f"{part}_storage" if part != "event_log" else "event_log_storage": {
                "module": module, "class": cls, "config": {"postgres_db": postgres_db}}
            for part, module, cls in (
                ("run", "dagster_postgres.run_storage", "PostgresRunStorage"),
                ("event_log", "dagster_postgres.event_log", "PostgresEventLogStorage"),
                ("schedule", "dagster_postgres.schedule_storage", "PostgresScheduleStorage"),
            )
        }
    else:
        storage = {"storage": {"sqlite": {"base_dir": str(tmp_path / "storage")}}}
    rendered = chart_instance_yaml(values, storage)
    # Out of cluster: the one change to what the chart renders.
    rendered["run_launcher"]["config"].update(load_incluster_config=False, kubeconfig_file=kubeconfig)
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(rendered))
    config, _ = dagster_instance_config(str(home))
    assert config["run_monitoring"]["max_resume_run_attempts"] == 3
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        assert isinstance(instance.run_launcher, k8s.K8sRunLauncher)
        assert instance.run_launcher.supports_resume_run
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == values["concurrency"]["runs"]["maxConcurrentRuns"]
        assert instance.run_retries_enabled and not instance.run_retries_retry_on_asset_or_op_failure
        assert not instance.telemetry_enabled
        if "run_storage" in rendered:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            assert instance.get_runs(limit=1) is not None  # a real query through the chart's Postgres block
    finally:
        instance.dispose()


def test_user_code_deployment_loads_garden_assets(k8s, values, user_code, deployment):
    from dagster_k8s.container_context import K8sContainerContext

    args = deployment["dagsterApiGrpcArgs"]
    module = args[args.index("--module-name") + 1]
    assert module == "garden_assets.definitions"
    defs = __import__(module, fromlist=["defs"]).defs
    assert isinstance(defs, dg.Definitions)
    # The webserver's fixed workspace points at this deployment's Service.
    (server,) = values["dagsterWebserver"]["workspace"]["servers"]
    assert (server["host"], server["port"]) == (deployment["name"], deployment["port"])
    assert server["name"] == args[args.index("--location-name") + 1]
    env = _env_of(deployment)
    assert env["GARDEN_EXECUTOR"] == "k8s" and env["GARDEN_PROFILE"] == "gpu-k8s"
    assert env["GARDEN_LANCE_URI"].startswith("s3://")
    assert env["GARDEN_HOME"] == deployment["volumeMounts"][0]["mountPath"]
    assert "garden-aws" in [s["name"] for s in deployment["envSecrets"]]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"]
    assert user_code["global"]["serviceAccountName"] == values["global"]["serviceAccountName"]
    assert user_code["global"]["postgresqlSecretName"] == values["global"]["postgresqlSecretName"]
    # dagster-k8s parses the container context the chart hands to runs.
    K8sContainerContext.create_from_config(chart_container_context(user_code, deployment))


def test_k8s_job_executor_config_passes_its_schema(k8s, deployment):
    from dagster._config import process_config

    cfg = executor_config(deployment)
    result = process_config(k8s.k8s_job_executor.config_schema.config_type, cfg)
    assert result.success, [e.message for e in result.errors]
    configured = k8s.k8s_job_executor.configured(cfg, name="garden_k8s")
    assert configured.name == "garden_k8s"
    assert set(cfg["per_step_k8s_config"]) <= set(STEP_OF.values())


def test_heavy_assets_request_gpus_under_gpu_k8s():
    for asset in HEAVY_ASSETS:
        spec = load_profile("gpu-k8s", asset)
        k8s_config = spec.op_tags()["dagster-k8s/config"]
        limits = k8s_config["container_config"]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == spec.gpus >= 1, asset
        assert k8s_config["pod_spec_config"]["node_selector"], asset
        assert spec.pool, asset
    assert all(load_profile("cpu-local", asset).op_tags() == {} for asset in HEAVY_ASSETS)


_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_UNITS = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
          "Ti": 2**40}


def _quantity(value) -> float:
    number, unit = _QUANTITY.match(str(value)).groups()
    return float(number) * _UNITS[unit]


def _step_job(k8s, values, user_code, deployment, kubeconfig, op_name: str, op_tags: dict):
    """The V1Job dagster-k8s's step handler builds for one step (executor.py: K8sStepHandler)."""
    from dagster._config import process_config
    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
    from dagster_k8s.job import construct_dagster_k8s_job

    launcher_cfg = {**chart_run_launcher_config(values), "load_incluster_config": False,
                    "kubeconfig_file": kubeconfig}
    launcher = k8s.K8sRunLauncher(**launcher_cfg)
    exec_cfg = process_config(
        k8s.k8s_job_executor.config_schema.config_type,
        {**executor_config(deployment), "load_incluster_config": False, "kubeconfig_file": kubeconfig},
    ).value
    executor = k8s.k8s_job_executor.executor_creation_fn(
        SimpleNamespace(instance=SimpleNamespace(run_launcher=launcher), executor_config=exec_cfg)
    )
    handler = executor._step_handler  # noqa: SLF001
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    origin = JobPythonOrigin(
        "__ASSET_JOB",
        RepositoryPythonOrigin(
            executable_path=sys.executable,
            code_pointer=ModuleCodePointer("garden_assets.definitions", "defs", None),
            container_image=image,
            container_context=chart_container_context(user_code, deployment),
        ),
    )
    run = dg.DagsterRun(job_name="__ASSET_JOB", run_id=str(uuid.uuid4()), job_code_origin=origin)
    fake = SimpleNamespace(
        execute_step_args=SimpleNamespace(step_keys_to_execute=[op_name]),
        dagster_run=run,
        instance=SimpleNamespace(run_launcher=launcher),
        step_tags={op_name: op_tags},
        get_step_context=lambda key: SimpleNamespace(step=SimpleNamespace(op_name=key)),
    )
    context = handler._get_container_context(fake)  # noqa: SLF001
    job_config = context.get_k8s_job_config(handler._executor_image, launcher)  # noqa: SLF001
    if not job_config.job_image:
        job_config = job_config.with_image(image)
    return construct_dagster_k8s_job(
        job_config, args=["dagster", "api", "execute_step"], job_name=f"dagster-step-{op_name.replace('_', '-')}",
        component="step_worker", user_defined_k8s_config=context.run_k8s_config,
    )


def _pod_checks(job, deployment):
    pod = job.spec.template.spec
    (container,) = pod.containers
    resources = container.resources
    requests = dict(resources.requests or {})
    limits = dict(resources.limits or {})
    for name, limit in limits.items():
        if name in requests:
            assert _quantity(requests[name]) <= _quantity(limit), f"{name}: request {requests[name]} > limit {limit}"
    env = {e.name: e for e in container.env}
    assert env["GARDEN_HOME"].value == "/data/garden" and env["GARDEN_LANCE_URI"].value.startswith("s3://")
    assert env["DAGSTER_PG_PASSWORD"].value_from.secret_key_ref.key == "postgresql-password"
    assert "garden-aws" in [s.secret_ref.name for s in container.env_from if s.secret_ref]
    assert [m.mount_path for m in container.volume_mounts] == ["/data/garden"]
    assert pod.volumes[0].persistent_volume_claim.claim_name == "garden-data"
    assert pod.security_context.fs_group == 10001
    assert pod.service_account_name == "garden-dagster"
    # The whole Job serializes to a manifest the API server would take.
    import kubernetes

    kubernetes.client.ApiClient().sanitize_for_serialization(job)
    return pod, container, requests, limits


def test_step_pods_get_their_gpus_node_and_image(k8s, values, user_code, deployment, kubeconfig):
    """For each heavy asset under gpu-k8s: the step pod dagster-k8s builds from these values and the asset's
    op tags (as @asset stores them) has the GPU limit, node selector, tolerations and the CUDA image."""
    per_step = executor_config(deployment)["per_step_k8s_config"]
    for asset, op_name in STEP_OF.items():
        spec = load_profile("gpu-k8s", asset)

        @dg.asset(name=op_name, op_tags=spec.op_tags(), pool=spec.pool)
        def heavy() -> None: ...

        job = _step_job(k8s, values, user_code, deployment, kubeconfig, op_name, dict(heavy.op.tags))
        pod, container, requests, limits = _pod_checks(job, deployment)
        assert int(limits["nvidia.com/gpu"]) == spec.gpus, asset
        assert pod.node_selector == spec.node_selector, asset
        assert [t.key for t in pod.tolerations] == ["nvidia.com/gpu"], asset
        assert container.image == per_step[op_name]["container_config"]["image"], asset
        assert requests["memory"] == spec.resources["requests"]["memory"], asset
    # A CPU step (ingest) gets the code location's own image, the default step requests and no GPU.
    job = _step_job(k8s, values, user_code, deployment, kubeconfig, "raw_posts", {})
    pod, container, requests, limits = _pod_checks(job, deployment)
    assert container.image == f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    assert "nvidia.com/gpu" not in limits and not pod.node_selector
    assert requests == executor_config(deployment)["step_k8s_config"]["container_config"]["resources"]["requests"]


def test_single_gpu_profile_requests_one_gpu_in_the_gpu_pool():
    for asset in HEAVY_ASSETS:
        spec = load_profile("gpu-single", asset)
        assert spec.gpus == 1 and spec.pool == "gpu", asset
        assert isinstance(spec, ComputeSpec)


def test_dockerfiles_pin_the_project_torch_and_load_the_definitions():
    pyproject = (ROOT / "pyproject.toml").read_text()
    torch_pin = re.search(r'"torch==([0-9.]+)"', pyproject).group(1)
    for name in ("Dockerfile", "Dockerfile.cuda"):
        text = (DEPLOY / name).read_text()
        assert f"ARG TORCH_VERSION={torch_pin}" in text, name
        assert '".[deploy]"' in text and "GARDEN_PROFILES_DIR=/opt/garden/deploy/profiles" in text, name
        assert "COPY deploy/profiles" in text and '"garden_assets.definitions"' in text, name
    assert "download.pytorch.org/whl/cpu" in (DEPLOY / "Dockerfile").read_text()
    assert "deepspeed==" in (DEPLOY / "Dockerfile.cuda").read_text()


def test_postgres_script_is_valid_bash():
    script = ROOT / ".ci" / "postgres.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    env_only = subprocess.run(["bash", str(script), "env"], capture_output=True, text=True, timeout=30)
    assert env_only.returncode == 0
    exported = dict(line.removeprefix("export ").split("=", 1) for line in env_only.stdout.splitlines())
    assert set(PG_VARS) | {"GARDEN_TEST_PG_DSN"} == set(exported)
    assert json.dumps(exported)  # plain strings
