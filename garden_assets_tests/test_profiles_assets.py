"""The compute profile drives the heavy assets' op_tags and pools (what k8s_job_executor turns into pod specs)."""

import json
import os
import subprocess
import sys

PROBE = """
import json
import dagster as dg
from garden_assets.definitions import defs
graph = defs.resolve_asset_graph()
out = {}
for name in ("qa_index", "tuned_model", "evaluation_answers"):
    node = graph.get(dg.AssetKey(name))
    out[name] = {"op_tags": node.assets_def.node_def.tags, "pool": sorted(node.pools)}
print(json.dumps(out))
"""


def probe(profile: str) -> dict:
    env = {**os.environ, "GARDEN_PROFILE": profile}
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_gpu_k8s_profile_puts_gpu_requests_on_heavy_assets():
    tags = probe("gpu-k8s")
    for name in ("qa_index", "tuned_model", "evaluation_answers"):
        k8s = json.loads(tags[name]["op_tags"]["dagster-k8s/config"])  # Dagster stores tag values as JSON
        limits = k8s["container_config"]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
        assert tags[name]["pool"]


def test_cpu_local_profile_requests_no_gpu():
    tags = probe("cpu-local")
    for name in ("qa_index", "tuned_model", "evaluation_answers"):
        assert "nvidia.com/gpu" not in json.dumps(tags[name]["op_tags"])
