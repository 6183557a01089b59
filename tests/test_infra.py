"""The cluster manifests: generated files are current, KubeRay objects validate against the pinned CRD schemas
(../shared/infra/kuberay-v1.7.0, offline with jsonschema), the `ray up` config against Ray's own schema, and the
pipeline they run loads; a broken manifest is rejected (the check can fail)."""

import copy
import functools
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from helpers import ROOT

SHARED_INFRA = Path(os.environ.get("SEMREC_SHARED_INFRA", ROOT.parent / "shared" / "infra")) / "kuberay-v1.7.0"
CRDS = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml", "RayCronJob": "ray.io_raycronjobs.yaml"}


def _schema(kind: str) -> dict:
    if not SHARED_INFRA.exists():
        pytest.skip(f"pinned KubeRay CRDs not available: {SHARED_INFRA} (../shared/infra is absent on this machine)")
    return _load_schema(kind)  # jsonschema does not modify it


@functools.cache
def _load_schema(kind: str) -> dict:
    """A CRD's v1 schema, parsed once (the CRDs are 0.8-1.4 MB of YAML: ~2.7 s each in pure Python)."""
    crd = yaml.load((SHARED_INFRA / CRDS[kind]).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return version["schema"]["openAPIV3Schema"]


def _docs() -> list[tuple[str, dict]]:
    out = []
    for f in sorted((ROOT / "infra" / "k8s").glob("*.yaml")):
        out += [(f.name, d) for d in yaml.safe_load_all(f.read_text()) if d]
    return out


def test_generated_manifests_are_current():
    r = subprocess.run([sys.executable, str(ROOT / "infra" / "k8s" / "render.py"), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


def test_kuberay_manifests_validate_against_the_pinned_crds():
    kinds = {}
    for name, doc in _docs():
        kinds.setdefault(doc["kind"], []).append(name)
        if doc["kind"] in CRDS:
            jsonschema.validate(doc, _schema(doc["kind"]))
        if doc["kind"] == "ConfigMap" and "rayjob.yaml" in doc["data"]:  # the CronJob's template
            jsonschema.validate(yaml.safe_load(doc["data"]["rayjob.yaml"]), _schema("RayJob"))
    assert {"RayCluster", "RayJob", "RayCronJob", "CronJob", "ServiceAccount", "Role", "RoleBinding"} <= set(kinds)


def test_a_broken_manifest_is_rejected():
    job = next(d for _, d in _docs() if d["kind"] == "RayJob")
    bad = copy.deepcopy(job)
    bad["spec"]["shutdownAfterJobFinishes"] = "yes"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, _schema("RayJob"))
    cron = next(d for _, d in _docs() if d["kind"] == "RayCronJob")
    bad = copy.deepcopy(cron)
    del bad["spec"]["schedule"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, _schema("RayCronJob"))


def test_manifests_match_the_project():
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_pin = next(p for p in pins if p.startswith("ray[")).split("==")[1]
    dockerfile = (ROOT / "infra" / "Dockerfile").read_text()
    assert f"rayproject/ray:{ray_pin}-py311" in dockerfile and '"torch==2.13.0"' in dockerfile
    docs = dict(_docs())
    for name, doc in _docs():
        spec = doc.get("spec", {})
        cluster = spec.get("rayClusterSpec") or spec.get("jobTemplate", {}).get("rayClusterSpec") or \
            (spec if doc["kind"] == "RayCluster" else None)
        if cluster:
            assert cluster["rayVersion"] == ray_pin, name
            gpu = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu")
            assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
        entry = spec.get("entrypoint") or spec.get("jobTemplate", {}).get("entrypoint")
        if entry:
            assert entry.split()[1] == "/app/jobs/retrain.py" and (ROOT / "jobs" / "retrain.py").exists()
    # the pipeline in the ConfigMap loads as retrain settings, with paths on the shared volume
    from semrec.config.settings import RetrainSettings

    config = next(d for d in docs.values() if d["kind"] == "ConfigMap" and "retrain.toml" in d.get("data", {}))
    settings = RetrainSettings(**tomllib.loads(config["data"]["retrain.toml"]))
    assert str(settings.root).startswith("/data/") and [s.job for s in settings.steps][-1] == "train_seqrec"
    assert "../shared" not in config["data"]["retrain.toml"]


def test_ray_up_config_validates_against_rays_schema():
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "infra" / "ray-up.yaml").read_text())
    jsonschema.validate(config, schema)
    bad = {**config, "max_workers": "two"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
