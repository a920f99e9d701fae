"""Where the W&B backend finds its server and API key: the places W&B's own tools look.

The base URL: the backend URL (`wandb+https://host`), else `WANDB_BASE_URL`, else the
public cloud. The key: `WANDB_API_KEY`, else the password of the `.netrc` entry for the
server's host (what `wandb login` writes; `NETRC` names another file).
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from agent_lib.errors import ConfigError

DEFAULT_BASE_URL = "https://api.wandb.ai"
SCHEMES = ("wandb", "wandb+http", "wandb+https")


def is_wandb_url(url: str) -> bool:
    """Whether a backend URL names the W&B backend: `wandb`, `wandb://`, `wandb+https://...`."""
    return url == "wandb" or url.split("://", 1)[0] in SCHEMES


def base_url_from(url: str) -> str:
    """The server's base URL for a backend URL (no trailing slash, no `/graphql`)."""
    scheme, _, rest = url.partition("://")
    if scheme.startswith("wandb+") and rest.strip("/"):
        base = f"{scheme.removeprefix('wandb+')}://{rest}"
    else:
        base = os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL
    parsed = urlparse(base)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(
            f"W&B base URL {base!r} is not an http(s) URL: use e.g. https://api.wandb.ai "
            "(WANDB_BASE_URL, or the backend URL wandb+https://HOST)"
        )
    if parsed.username or parsed.password:
        raise ConfigError(
            "the W&B base URL must not carry credentials: give the key in WANDB_API_KEY"
        )
    return base.rstrip("/").removesuffix("/graphql")


def resolve_api_key(base_url: str, explicit: str | None = None) -> str:
    """The API key to use; a ConfigError saying where to put one if there is none."""
    key = explicit or os.environ.get("WANDB_API_KEY") or _netrc_key(base_url)
    if not key:
        host = urlparse(base_url).hostname
        raise ConfigError(
            f"no W&B API key for {base_url}: set WANDB_API_KEY, or run `wandb login` "
            f"(it stores the key in ~/.netrc under machine {host})"
        )
    return key.strip()


def _netrc_key(base_url: str) -> str | None:
    """The password of the `.netrc` entry for the server's host, as `wandb login` writes it."""
    import requests.utils  # here: telling a W&B URL apart needs no HTTP client

    auth = requests.utils.get_netrc_auth(base_url)
    return auth[1] if auth and auth[1] else None
