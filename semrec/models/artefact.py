"""A trained model as a folder: ``config.json`` (architecture, format version, the spec its builder takes;
no data paths) + ``model.safetensors``. Loading never unpickles anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from torch import nn

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
FORMAT_VERSION = 1


def save_pretrained(model: nn.Module, directory: str | Path, architecture: str, state: dict | None = None) -> Path:
    """Write ``model.config`` and ``state`` (default: the model's own weights, per-item buffers included)."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = state if state is not None else model.state_dict()
    # clones: tensors shared between modules (an item side read by the user encoder too) are stored per key
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in state.items()}, str(d / WEIGHTS_FILE))
    (d / CONFIG_FILE).write_text(json.dumps({"architecture": architecture, "format_version": FORMAT_VERSION,
                                             **model.config}, indent=2, sort_keys=True) + "\n")
    return d


def from_pretrained(directory: str | Path, architecture: str, build: Callable[[dict], nn.Module],
                    device: str = "cpu") -> nn.Module:
    """``build(spec)`` with the saved spec, the saved weights loaded (``load_weights``), in eval mode."""
    from semrec.errors import InputError

    d = Path(directory)
    try:
        spec = json.loads((d / CONFIG_FILE).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{d / CONFIG_FILE}: cannot read model config ({e})") from None
    if spec.get("architecture") != architecture:
        raise InputError(f"{d / CONFIG_FILE}: not a {architecture} model (architecture {spec.get('architecture')!r})")
    model = build({k: v for k, v in spec.items() if k not in ("architecture", "format_version")})
    load_weights(model, d)
    return model.to(device).eval()


def load_weights(model: nn.Module, directory: str | Path) -> None:
    """Load the weights a ``save_pretrained`` folder holds into ``model`` (built by the caller), refusing a
    folder whose tensors do not match the model's by name and shape (another architecture, size or catalogue)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from semrec.errors import InputError

    path = Path(directory) / WEIGHTS_FILE
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise InputError(f"{path}: cannot read the model weights ({e})") from None
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise InputError(f"{path}: does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]}, "
                         f"shapes differ: {shapes[:3]}); it needs weights of the same architecture, size and "
                         f"catalogue")
    model.load_state_dict(state)


def model_version(directory: str | Path) -> str:
    """The first 16 hex digits of the sha256 of the saved weights: what caches built from the model record."""
    import hashlib

    h = hashlib.sha256()
    with open(Path(directory) / WEIGHTS_FILE, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
