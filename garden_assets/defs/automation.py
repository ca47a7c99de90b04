"""The drops sensor: a new or changed drop becomes a partition and a run; an unchanged one never does."""


import json
import os

import dagster as dg

from ..drops import Drop, run_key, scan_drops
from ..files import file_sha256
from .posts import drops_partitions, raw_posts
from .resources import GardenPaths

SETTLE_SECONDS = float(os.environ.get("GARDEN_DROP_SETTLE_S", "2"))
INTERVAL_SECONDS = int(os.environ.get("GARDEN_SENSOR_INTERVAL_S", "30"))  # both sensors' minimum tick interval


SENSOR_NAME = "drops_sensor"


def drop_run_tags(drop: Drop, digest: str) -> dict[str, str]:
    """The tags the sensor's run of a drop carries; ``make run`` puts them (with the sensor's name) on its own runs,
    so the sensor's first tick finds that run key taken and launches nothing."""
    return {"garden/drop_hash": digest[:16], "garden/site": drop.site}


@dg.sensor(
    name=SENSOR_NAME,
    asset_selection=[raw_posts],
    minimum_interval_seconds=INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches GARDEN_DROPS; run keys carry the drop's content hash.",
)
def drops_sensor(context: dg.SensorEvaluationContext, paths: GardenPaths) -> dg.SensorResult:
    # The cursor remembers (size, mtime) → hash per drop so an unchanged file is never hashed again.
    seen: dict = json.loads(context.cursor) if context.cursor else {}
    drops, problems = scan_drops(paths.drops_path, settle_seconds=SETTLE_SECONDS)
    for problem in problems:
        context.log.warning(f"not a drop: {problem}")
    known = set(context.instance.get_dynamic_partitions(drops_partitions.name))
    requests, new_keys, cursor = [], [], {}
    for drop in drops:
        stamp = [drop.size, drop.mtime_ns]
        previous = seen.get(drop.key)
        digest = previous["hash"] if previous and previous["stamp"] == stamp else file_sha256(drop.file)
        cursor[drop.key] = {"stamp": stamp, "hash": digest, "site": drop.site}
        if drop.key not in known:
            new_keys.append(drop.key)
        elif previous and previous["hash"] == digest and previous.get("site") == drop.site:
            continue  # unchanged content and site: nothing to do (the run key would dedupe it anyway)
        requests.append(
            dg.RunRequest(
                run_key=run_key(drop, digest),  # Dagster skips run keys it has already seen (make run's too)
                partition_key=drop.key,
                tags=drop_run_tags(drop, digest),
            )
        )
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[drops_partitions.build_add_request(new_keys)] if new_keys else [],
        cursor=json.dumps(cursor),
        skip_reason=None if drops else f"no drops in {paths.drops_path}",
    )


# Evaluates every asset's automation condition (eager: follow upstream changes); on by default so a new drop
# flows downstream with nobody clicking.
automation_sensor = dg.AutomationConditionSensorDefinition(
    "garden_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=INTERVAL_SECONDS,
)
