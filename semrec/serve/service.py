"""The DMQN scoring service: one JSON request in, one JSON response out, with an HTTP status.

``ScoringService`` holds a model, its user-state store and the request checks; it has no web framework in
it, so the same object is tested directly and runs inside the Ray Serve deployment (``semrec.serve.app``).

Request (POST body)::

    {"user_id": 42, "items": [17, 305, 9], "history": [3, 8, 8, 120]}   # history: optional, time order

``history`` is the user's raw behaviour sequence; it is read only when the user is not in the cache (or
the store cannot be read), so the caller's feature service may always send it or never. Response::

    {"user_id": 42, "logits": [...], "probs": [...], "source": "cache", "model_version": "..."}

``source`` is ``cache``, ``computed`` (a miss, state computed from ``history``) or ``computed: store
unavailable``. Errors answer ``{"error": reason}``: 400 for a malformed request or ids outside the
catalogue, 404 for a user that is neither cached nor sent with a history, 413 for too many candidates,
503 when the store is down and no history was sent.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from semrec.errors import InputError
from semrec.serve.cache import MemmapStore, RedisStore, Scorer, StoreUnavailable

MAX_CANDIDATES = 1000


def open_store(cache: str | Path | None, redis_url: str | None, version: str, prefix: str = "semrec:dmqn"):
    """The embedded store of a build_cache output folder (``cache/store``), or the rows of ``version`` in the
    Redis server at ``redis_url`` (loaded there from ``cache/user_cache`` first if the server lacks them)."""
    if redis_url is None:
        if cache is None:
            raise InputError("no store: give the build_cache output folder (--cache) or a Redis URL (--redis_url)")
        return MemmapStore(Path(cache) / "store", version)
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        if not RedisStore.holds(client, version, prefix):  # absent, or loaded by an older semrec
            if cache is None:
                raise InputError(f"{redis_url} holds no cache of model {version} and no --cache folder was given "
                                 f"to load it from")
            RedisStore.load(Path(cache) / "user_cache", client, prefix)
    except redis.exceptions.ConnectionError as e:
        raise StoreUnavailable(f"Redis store unavailable at {redis_url}: {e}") from e
    return RedisStore(client, version, prefix)


class RequestError(ValueError):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


def _ids(body: dict, key: str, required: bool) -> list[int] | None:
    v = body.get(key)
    if v is None:
        if required:
            raise RequestError(400, f"missing field {key!r} (a list of item ids)")
        return None
    if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise RequestError(400, f"field {key!r} must be a list of integer item ids")
    return v


class ScoringService:
    def __init__(self, model: str | Path, cache: str | Path | None = None, redis_url: str | None = None,
                 max_candidates: int = MAX_CANDIDATES):
        from semrec.models.artefact import model_version

        self.version = model_version(model)
        self.scorer = Scorer(model, open_store(cache, redis_url, self.version))
        self.max_candidates = max_candidates
        self.store = "redis" if redis_url else "memmap"

    def info(self) -> dict:
        m = self.scorer.model
        return {"model_version": self.version, "paradigm": m.paradigm, "n_items": self.scorer.n_items,
                "max_len": self.scorer.max_len, "store": self.store, "max_candidates": self.max_candidates}

    def parse(self, raw: bytes | str | dict) -> tuple[int, list[int], list[int] | None]:
        if isinstance(raw, dict):
            body = raw
        else:
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                raise RequestError(400, f"the body is not JSON ({e})") from None
        if not isinstance(body, dict):
            raise RequestError(400, "the body must be a JSON object with user_id and items")
        user = body.get("user_id")
        if not isinstance(user, int) or isinstance(user, bool):
            raise RequestError(400, "missing or non-integer field 'user_id'")
        items, history = _ids(body, "items", True), _ids(body, "history", False)
        if not items:
            raise RequestError(400, "'items' is empty: send at least one candidate item id")
        if len(items) > self.max_candidates:
            raise RequestError(413, f"{len(items)} candidates; at most {self.max_candidates} per request")
        unknown = set(body) - {"user_id", "items", "history"}
        if unknown:
            raise RequestError(400, f"unknown field(s) {sorted(unknown)}; expected user_id, items, history")
        return user, items, history

    def handle(self, raw: bytes | str | dict) -> tuple[int, dict]:
        """(HTTP status, JSON body). Never raises for a bad request."""
        try:
            user, items, history = self.parse(raw)
            logits, source = self.scorer.score(user, items, history)
        except RequestError as e:
            return e.status, {"error": str(e)}
        except KeyError as e:  # neither cached nor sent with a history
            return 404, {"error": e.args[0]}
        except StoreUnavailable as e:
            return 503, {"error": f"{e}; send the user's history to score without the store"}
        except ValueError as e:  # ids outside the catalogue, an empty history
            return 400, {"error": str(e)}
        logits = [float(x) for x in logits]
        return 200, {"user_id": user, "logits": logits, "probs": [1 / (1 + math.exp(-x)) for x in logits],
                     "source": source, "model_version": self.version}
