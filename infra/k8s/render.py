#!/usr/bin/env python
"""Render semrec's Kubernetes manifests (KubeRay >= 1.6) from one definition:

    raycluster.yaml       a long-lived RayCluster (head, CPU workers, GPU workers) for `jobs/submit.py`
    rayjob-retrain.yaml   a RayJob: one retraining run (jobs/retrain.py) on its own cluster, torn down after
    raycronjob-retrain.yaml  the same RayJob on a schedule (RayCronJob: alpha feature gate `RayCronJob` of the
                          operator, e.g. helm ... --set featureGates[0].name=RayCronJob,featureGates[0].enabled=true)
    cronjob-retrain.yaml  the alternative without the gate: a Kubernetes CronJob that creates the RayJob with
                          kubectl (ServiceAccount + Role + RoleBinding included)
    retrain-config.yaml   the ConfigMap holding the pipeline (infra/retrain.beauty.toml with /data paths)

    python infra/k8s/render.py            # rewrite the files
    python infra/k8s/render.py --check    # exit 1 if a committed file differs (tests/test_infra.py does this)

Storage: a ReadWriteMany PersistentVolumeClaim ``semrec-data`` mounted at /data on every pod (datasets under
/data/shared, outputs under /data/out); models load from /data/models (no hub access at run time).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RAY_VERSION = "2.60.0"
IMAGE = "REGISTRY/semrec:0.1.0"
GPU_IMAGE = "REGISTRY/semrec:0.1.0-gpu"
SCHEDULE = "0 3 * * *"  # daily, 03:00
ENTRYPOINT = "python /app/jobs/retrain.py run --config /config/retrain.toml"
LABELS = {"app.kubernetes.io/name": "semrec"}


def _volumes(config: bool) -> tuple[list, list]:
    vols = [{"name": "data", "persistentVolumeClaim": {"claimName": "semrec-data"}}]
    mounts = [{"name": "data", "mountPath": "/data"}]
    if config:
        vols.append({"name": "config", "configMap": {"name": "semrec-retrain-config"}})
        mounts.append({"name": "config", "mountPath": "/config", "readOnly": True})
    return vols, mounts


def _container(name: str, image: str, cpu: str, memory: str, gpus: int = 0, mounts: list | None = None,
               ports: bool = False) -> dict:
    limits = {"cpu": cpu, "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = gpus
    c = {"name": name, "image": image, "resources": {"limits": limits, "requests": {"cpu": cpu, "memory": memory}},
         "env": [{"name": "HF_HUB_OFFLINE", "value": "1"},
                 {"name": "NCCL_DEBUG", "value": "WARN"}],
         "volumeMounts": mounts or []}
    if ports:
        c["ports"] = [{"containerPort": 6379, "name": "gcs-server"}, {"containerPort": 8265, "name": "dashboard"},
                      {"containerPort": 10001, "name": "client"}]
    return c


def cluster_spec(config: bool, cpu_workers: int = 2, gpu_workers: int = 0) -> dict:
    """A RayCluster spec: head (no training on it), CPU workers (Ray Data), GPU workers (Ray Train with
    --train.use_gpu; NCCL between them); autoscaling between min and max replicas."""
    vols, mounts = _volumes(config)
    head = {"rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": {"metadata": {"labels": LABELS},
                         "spec": {"containers": [_container("ray-head", IMAGE, "2", "8Gi", mounts=mounts,
                                                            ports=True)], "volumes": vols}}}
    cpu = {"groupName": "cpu", "replicas": cpu_workers, "minReplicas": 0, "maxReplicas": 16, "rayStartParams": {},
           "template": {"metadata": {"labels": LABELS},
                        "spec": {"containers": [_container("ray-worker", IMAGE, "8", "32Gi", mounts=mounts)],
                                 "volumes": vols}}}
    gpu = {"groupName": "gpu", "replicas": gpu_workers, "minReplicas": 0, "maxReplicas": 8, "rayStartParams": {},
           "template": {"metadata": {"labels": LABELS},
                        "spec": {"containers": [_container("ray-worker", GPU_IMAGE, "8", "64Gi", gpus=1,
                                                           mounts=mounts)],
                                 "volumes": vols,
                                 "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                  "effect": "NoSchedule"}]}}}
    return {"rayVersion": RAY_VERSION, "enableInTreeAutoscaling": True, "headGroupSpec": head,
            "workerGroupSpecs": [cpu, gpu]}


def rayjob_spec() -> dict:
    return {"entrypoint": ENTRYPOINT, "shutdownAfterJobFinishes": True, "ttlSecondsAfterFinished": 3600,
            "activeDeadlineSeconds": 6 * 3600, "backoffLimit": 1, "submissionMode": "K8sJobMode",
            "rayClusterSpec": cluster_spec(config=True, cpu_workers=2, gpu_workers=1)}


def meta(name: str, **extra) -> dict:
    return {"name": name, "labels": LABELS, **extra}


def manifests() -> dict[str, list[dict]]:
    pipeline = (ROOT / "infra" / "retrain.beauty.toml").read_text()
    pipeline = (pipeline.replace('root = "out/retrain-beauty"', 'root = "/data/out/retrain-beauty"')
                .replace('"../shared/data/', '"/data/shared/')
                .replace('"out/retrain-beauty/negatives"', '"/data/out/retrain-beauty/negatives"'))
    rayjob = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": meta("semrec-retrain"), "spec": rayjob_spec()}
    cron_rayjob = {**rayjob, "metadata": {"generateName": "semrec-retrain-", "labels": LABELS}}
    rbac = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("semrec-retrain-scheduler")},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta("semrec-retrain-scheduler"),
         "rules": [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get", "list", "delete"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": meta("semrec-retrain-scheduler"),
         "subjects": [{"kind": "ServiceAccount", "name": "semrec-retrain-scheduler"}],
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "semrec-retrain-scheduler"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("semrec-rayjob-template"),
         "data": {"rayjob.yaml": dump([cron_rayjob])}},
    ]
    cronjob = {
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta("semrec-retrain"),
        "spec": {"schedule": SCHEDULE, "concurrencyPolicy": "Forbid", "successfulJobsHistoryLimit": 3,
                 "failedJobsHistoryLimit": 3,
                 "jobTemplate": {"spec": {"backoffLimit": 2, "template": {"spec": {
                     "serviceAccountName": "semrec-retrain-scheduler", "restartPolicy": "OnFailure",
                     "containers": [{"name": "create-rayjob", "image": "bitnami/kubectl:1.31",
                                     "command": ["kubectl", "create", "-f", "/template/rayjob.yaml"],
                                     "volumeMounts": [{"name": "template", "mountPath": "/template"}]}],
                     "volumes": [{"name": "template", "configMap": {"name": "semrec-rayjob-template"}}]}}}}}}
    return {
        "raycluster.yaml": [{"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": meta("semrec"),
                             "spec": cluster_spec(config=False)}],
        "rayjob-retrain.yaml": [rayjob],
        "raycronjob-retrain.yaml": [{"apiVersion": "ray.io/v1", "kind": "RayCronJob", "metadata": meta("semrec-retrain"),
                                     "spec": {"schedule": SCHEDULE, "timeZone": "Etc/UTC",
                                              "jobTemplate": rayjob_spec()}}],
        "cronjob-retrain.yaml": rbac + [cronjob],
        "retrain-config.yaml": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("semrec-retrain-config"),
                                 "data": {"retrain.toml": pipeline}}],
    }


class _Plain(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:  # shared sub-dicts are written out, not as &anchors
        return True


def dump(docs: list[dict]) -> str:
    return yaml.dump_all(docs, Dumper=_Plain, sort_keys=False)


HEADER = "# generated by infra/k8s/render.py -- edit that file, then run it\n"


def render() -> dict[str, str]:
    return {name: HEADER + dump(docs) for name, docs in manifests().items()}


def main(argv: list[str]) -> int:
    stale = []
    for name, text in render().items():
        path = HERE / name
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale manifests (run python infra/k8s/render.py): {stale}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
