"""The index on an S3-compatible endpoint (moto's server on 127.0.0.1) through the same qa_index / search code."""

import json
import socket
import subprocess
import sys

import dagster as dg
import pytest

from garden_assets.defs import index
from garden_assets.defs.resources import AtomicParquetIOManager, GardenPaths
from garden_assets.retrieval.testing import sample_pairs

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")


@pytest.fixture
def s3(monkeypatch):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                 region_name="us-east-1").create_bucket(Bucket="garden")
    options = {"aws_access_key_id": "test", "aws_secret_access_key": "test", "aws_endpoint": endpoint,
               "aws_region": "us-east-1", "allow_http": "true"}
    monkeypatch.setenv("GARDEN_LANCE_STORAGE_OPTIONS", json.dumps(options))
    monkeypatch.setenv("GARDEN_LANCE_URI", "s3://garden/index")
    yield endpoint
    server.stop()


def test_qa_index_and_search_on_s3(s3, tmp_path):
    @dg.asset(name="qa_pairs")
    def pairs():
        return sample_pairs()

    paths = GardenPaths(home=str(tmp_path), drops=str(tmp_path), lance="s3://garden/index")
    result = dg.materialize([pairs, index.qa_index], instance=dg.DagsterInstance.ephemeral(),
                            resources={"paths": paths, "io_manager": AtomicParquetIOManager(base_dir=str(tmp_path / "s"))})
    assert result.success
    meta = result.asset_materializations_for_node("qa_index")[0].metadata
    assert meta["uri"].value == "s3://garden/index" and meta["rows"].value == sample_pairs().height
    objects = boto3.client("s3", endpoint_url=s3, aws_access_key_id="test", aws_secret_access_key="test",
                           region_name="us-east-1").list_objects_v2(Bucket="garden")["Contents"]
    assert any(o["Key"].startswith("index/") and o["Key"].endswith(".lance") for o in objects)
    assert not (tmp_path / "lancedb").exists()  # nothing went to the local disk
    # The CLI reads the same env and finds it.
    proc = subprocess.run([sys.executable, "-m", "garden_assets.cli", "search", "compost citrus peels", "--json"],
                          capture_output=True, text=True, check=True)
    hits = json.loads(proc.stdout.strip().splitlines()[-1])
    assert hits and "citrus" in hits[0]["title"].lower()
