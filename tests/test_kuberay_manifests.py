"""infra/kuberay/ read as data against the KubeRay v1 CRDs' required structure (the manifests
cannot be applied here: no Kubernetes). What a RayCluster and a RayJob must have to be accepted,
plus what vae-service needs of them: token auth from a Secret, CPU and GPU worker groups, and a
job entrypoint whose spec validates."""

from __future__ import annotations

from pathlib import Path

import yaml

from vae_service.core.spec_loading import load_spec_text

KUBERAY = Path(__file__).resolve().parents[1] / "infra" / "kuberay"


def manifest(name: str) -> dict:
    (document,) = yaml.safe_load_all((KUBERAY / name).read_text())
    return document


def _containers(template: dict) -> list[dict]:
    containers = template["spec"]["containers"]
    assert containers and all(c["name"] and c["image"] for c in containers)
    return containers


def _env(container: dict) -> dict:
    return {item["name"]: item for item in container["env"]}


def test_raycluster_has_a_head_and_cpu_and_gpu_worker_groups():
    cluster = manifest("raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    assert spec["rayVersion"].startswith("2.60")
    head = spec["headGroupSpec"]
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())  # the CRD takes strings
    assert head["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
        _containers(group["template"])
    gpu = _containers(groups["gpu"]["template"])[0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == gpu["requests"]["nvidia.com/gpu"] == "1"


def test_every_pod_takes_the_ray_token_from_a_secret_and_no_secret_is_written():
    spec = manifest("raycluster.yaml")["spec"]
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for template in templates:
        for container in _containers(template):
            env = _env(container)
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            for name in ("RAY_AUTH_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"):
                assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "vae-secrets", name
                assert "value" not in env[name]


def test_rayjob_runs_the_queue_entrypoint_on_the_cluster_with_a_valid_spec():
    job = manifest("rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert spec["clusterSelector"]["ray.io/cluster"] == manifest("raycluster.yaml")["metadata"]["name"]
    assert spec["entrypoint"] == "python -m vae_service.queue.entry"
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert env["VAE_JOB_ID"]
    train = load_spec_text(env["VAE_JOB_SPEC"], "rayjob.yaml")
    assert train.storage.uri.startswith("s3://") and train.resources.placement == "spread"
