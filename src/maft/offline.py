"""Pretrained weights without a network: use the local caches, or fail at once with a remedy.

Offline, open_clip's and timm's hub downloads retry for about 50 s and then raise a bare
FileNotFoundError. maft looks first: a file already in the cache is used as it is; otherwise
``HF_HUB_OFFLINE=1`` or one short TCP probe of the download host decides, and an unreachable host
raises :class:`WeightsUnavailableError` naming the weights and how to go on offline.
"""

from __future__ import annotations

import os
import socket
import threading
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from maft.errors import ConfigError

#: Seconds the reachability probe waits for a TCP connection (name lookup included).
PROBE_TIMEOUT_S = 2.5
#: What to do offline, for the CLIP weights (the message of :func:`require_download` ends with it).
CLIP_REMEDY = (
    "Offline, give a local checkpoint file instead: model.clip.pretrained=/path/to/weights "
    "(e.g. OpenAI's ViT-B-16.pt or an open_clip .bin/.safetensors file, downloaded once on a "
    "machine with network), or train on a CPU with no download at all: experiment=folder_cpu "
    "data.root=<your folder> (README, 'Train on your own images (CPU)')"
)
_TRUE = {"1", "true", "yes", "on"}


class WeightsUnavailableError(ConfigError):
    """Pretrained weights are neither on disk nor downloadable now (no network)."""


def offline_mode() -> bool:
    """True when ``HF_HUB_OFFLINE`` (huggingface_hub's switch) asks for no network at all."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hf_hub_url() -> str:
    """The Hugging Face hub's address (``HF_ENDPOINT`` when set)."""
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def _address(url: str) -> tuple[str, int]:
    """(host, port) a download from ``url`` connects to first: its proxy when one is set."""
    scheme = urlsplit(url).scheme or "https"
    for key in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY", "all_proxy", "ALL_PROXY"):
        if os.environ.get(key):
            url = os.environ[key]
            break
    parts = urlsplit(url if "//" in url else f"//{url}")
    return parts.hostname or "", parts.port or (80 if parts.scheme == "http" else 443)


@lru_cache(maxsize=32)
def probe(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to ``host:port`` opens within ``timeout`` s (once per process)."""
    result: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # a thread bounds the name lookup too (getaddrinfo ignores socket timeouts)
    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return bool(result and result[0])


def network_problem(url: str) -> str | None:
    """Why nothing can be downloaded from ``url`` now (offline mode, host unreachable), or None."""
    if offline_mode():
        return "HF_HUB_OFFLINE is set (no network)"
    host, port = _address(url)
    if not host:
        return None
    if not probe(host, port):
        return f"{host}:{port} cannot be reached (no connection within {PROBE_TIMEOUT_S:g} s)"
    return None


def require_download(what: str, url: str, remedy: str) -> None:
    """Raise :class:`WeightsUnavailableError` now when ``what`` cannot come from ``url``."""
    problem = network_problem(url)
    if problem:
        raise WeightsUnavailableError(
            f"{what} are not in the local cache and must be downloaded from {url}, but "
            f"{problem}. {remedy}"
        )


def check_weights_available(cfg: Any) -> None:
    """Before any work: every pretrained file a training config names is on disk or downloadable.

    Raises :class:`WeightsUnavailableError` (the CLIP tag of ``model.clip``, the timm backbone
    of ``model.proposals``) instead of a download that would retry and fail later.
    """
    model = cfg.get("model") or {}
    clip = model.get("clip") or {}
    if clip.get("name") and clip.get("pretrained"):
        from maft.models.clip.factory import check_pretrained_available

        check_pretrained_available(str(clip.name), str(clip.pretrained))
    props = model.get("proposals") or {}
    if props.get("arch", "lite") == "lite" and props.get("backbone"):
        from maft.models.proposals.backbone import check_backbone_available

        check_backbone_available(
            str(props.backbone),
            bool(props.get("pretrained_backbone", False)),
            props.get("backbone_weights"),
        )


__all__ = [
    "CLIP_REMEDY",
    "PROBE_TIMEOUT_S",
    "WeightsUnavailableError",
    "check_weights_available",
    "network_problem",
    "offline_mode",
    "probe",
    "require_download",
]
