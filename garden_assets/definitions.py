"""The one Definitions object: assets, checks, sensors, schedules, jobs and resources."""

import dagster as dg

from .defs import automation, posts
from .defs.resources import resources

defs = dg.Definitions(
    assets=[posts.raw_posts, posts.clean_posts, posts.qa_pairs],
    sensors=[automation.drops_sensor, automation.automation_sensor],
    resources=resources(),
)
