"""The Ray Serve deployment around ``ScoringService``: POST a scoring request, GET the model's info.

Each replica loads the model and opens its store once in ``__init__`` (the memory-mapped store is shared by
the replicas of a node through the page cache; Redis by every node).
"""

from __future__ import annotations

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse


@serve.deployment(name="dmqn")
class DMQNDeployment:
    def __init__(self, model: str, cache: str | None, redis_url: str | None, max_candidates: int, threads: int):
        import torch

        from semrec.serve.service import ScoringService

        torch.set_num_threads(threads)
        self.service = ScoringService(model, cache, redis_url, max_candidates)

    async def __call__(self, request: Request) -> JSONResponse:
        if request.method == "GET":
            return JSONResponse(self.service.info())
        if request.method != "POST":
            return JSONResponse({"error": f"method {request.method} not allowed; POST a scoring request"},
                                status_code=405)
        status, body = self.service.handle(await request.body())
        return JSONResponse(body, status_code=status)


def application(model: str, cache: str | None, redis_url: str | None, max_candidates: int, threads: int,
                replicas: int, cpus: float):
    return DMQNDeployment.options(num_replicas=replicas, ray_actor_options={"num_cpus": cpus}).bind(
        model, cache, redis_url, max_candidates, threads)
