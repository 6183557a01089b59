"""Serve a DMQN model and its user-state cache over HTTP with Ray Serve (``semrec.serve.app``).

1. before Ray: the model folder is a DMQN model and the store holds its version (a stale or missing cache
   stops here, with the reason, and nothing is deployed);
2. Serve's HTTP proxy on ``--host:--port``, the deployment at ``--route_prefix``;
3. a real request through HTTP (the first cached user, or a GET of the model info) before reporting ready;
4. serve until interrupted (Ctrl-C shuts the application down), or ``--detach``: return and leave it running.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request

from semrec.config.settings import ServeSettings
from semrec.errors import ConfigError

log = logging.getLogger("semrec")
APP_NAME = "semrec-dmqn"


def url(s: ServeSettings) -> str:
    return f"http://{'127.0.0.1' if s.host in ('0.0.0.0', '::') else s.host}:{s.port}{s.route_prefix}"


def _wait_ready(address: str, timeout_s: float = 60.0) -> dict:
    """GET the deployment until it answers (the proxy may report 503 while the replica starts)."""
    t0, last = time.perf_counter(), None
    while time.perf_counter() - t0 < timeout_s:
        try:
            with urllib.request.urlopen(address, timeout=10) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            last = e
            time.sleep(0.5)
    raise RuntimeError(f"the deployment at {address} did not answer within {timeout_s:.0f} s ({last})")


def deploy(s: ServeSettings) -> dict:
    """Check the model and store, start the deployment and return its info once it answers over HTTP."""
    import os

    from ray import serve

    from semrec.pipelines.build_cache import check_model
    from semrec.pipelines.runtime import init_ray
    from semrec.serve.app import application
    from semrec.serve.service import ScoringService

    if s.detach and not (s.ray.address or os.environ.get("RAY_ADDRESS")):
        raise ConfigError("--detach leaves the deployment on a running cluster: give --ray.address (or submit with "
                          "ray job submit); an in-process Ray ends with this process")
    check_model(s.model)
    probe = ScoringService(s.model, s.cache, s.redis_url, s.max_candidates)  # stale / missing store: stop here
    model, cache = str(s.model.absolute()), str(s.cache.absolute()) if s.cache else None
    del probe
    init_ray(s.ray)
    serve.start(http_options={"host": s.host, "port": s.port})
    serve.run(application(model, cache, s.redis_url, s.max_candidates, s.threads, s.replicas, s.cpus_per_replica),
              name=APP_NAME, route_prefix=s.route_prefix)
    info = _wait_ready(url(s))
    print(f"serving DMQN model {info['model_version']} ({info['store']} store) at {url(s)}  "
          f"(POST {{\"user_id\": ..., \"items\": [...], \"history\": [...]}})", flush=True)
    return info


def run(s: ServeSettings) -> dict:
    info = deploy(s)
    if s.detach:
        return info
    from ray import serve

    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping the deployment", flush=True)
        serve.delete(APP_NAME)
    return info


def main(argv: list[str] | None = None) -> int:
    from semrec.pipelines.runtime import job_main

    return job_main(ServeSettings, run, "serve_dmqn", argv)
