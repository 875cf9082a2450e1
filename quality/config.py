"""Runtime settings, read from the environment (``QUALITY_*``) or ``.streamlit/secrets.toml``.

Library code never reads settings itself: the CLI and the app read them once and pass
engines, sessions and stores down.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = [
    "DEFAULT_DB_URL",
    "DEFAULT_STORE",
    "OIDC_PROVIDER_KEYS",
    "SECRETS_PATH",
    "Settings",
    "get_settings",
    "oidc_provider_label",
    "oidc_providers",
    "read_auth_section",
]

DEFAULT_DB_URL = "sqlite:///data_samples/demo.db"
DEFAULT_STORE = "data_samples/dicom"
DEMO_SALT = "quality-workbench-demo-salt"
DEFAULT_THUMB_CACHE = str(Path.home() / ".cache" / "quality-workbench" / "thumbs")
SECRETS_PATH = Path(".streamlit/secrets.toml")
"""Where the app's secrets live (relative to the working folder, as Streamlit reads them)."""


class _SecretsTomlSource(PydanticBaseSettingsSource):
    """Reads the ``[quality]`` table of ``.streamlit/secrets.toml`` when it exists."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        if path.is_file():
            with path.open("rb") as fh:
                self._data = dict(tomllib.load(fh).get("quality", {}))

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._data.items() if k in self.settings_cls.model_fields}


class Settings(BaseSettings):
    """Workbench settings.

    Attributes
    ----------
    db_url : SQLAlchemy URL of the annotation DB (``QUALITY_DB_URL``).
    store : image store root: a folder, ``s3://...`` or ``dicomweb+http(s)://...`` (``QUALITY_STORE``).
    device : torch device for image models: ``auto``, ``cpu`` or ``cuda`` (``QUALITY_DEVICE``).
    phi_salt : secret salt for pseudonymous patient keys (``QUALITY_PHI_SALT``).
    auth_file : optional users file (``QUALITY_AUTH_FILE``).
    s3_endpoint_url : endpoint of an S3-compatible server (MinIO, Ceph, moto); None for AWS
        (``QUALITY_S3_ENDPOINT_URL``).
    s3_key, s3_secret : access key id and secret; None falls back to the usual AWS chain
        (``AWS_ACCESS_KEY_ID``, ``~/.aws/credentials``, instance roles).
    s3_region : region name, or None.
    dicomweb_user, dicomweb_password : HTTP basic auth for DICOMweb servers.
    dicomweb_token : bearer token for DICOMweb servers (used instead of basic auth).
    thumb_cache_dir : folder of the local thumbnail cache (``QUALITY_THUMB_CACHE_DIR``).
    thumb_cache_mb : size bound of that cache in MiB; the least recently used go first.
    store_retries : attempts per remote request before a store counts as unavailable.
    store_backoff_s : first back-off delay in seconds; doubled per attempt (with jitter).
    store_timeout_s : connect/read timeout of one remote request, in seconds.
    demo_mode : authentication off, anyone picks any role in the sidebar
        (``QUALITY_DEMO_MODE``); for the demo only, never with real patient data.
    db_url_readonly : optional URL of a read-only DB user for the analysis pages
        (``QUALITY_DB_URL_READONLY``); writes (reviews, rules, sign-ins, audit) keep ``db_url``.
    """

    model_config = SettingsConfigDict(env_prefix="QUALITY_", extra="ignore")

    db_url: str = Field(default=DEFAULT_DB_URL, repr=False)  # may hold a password
    store: str = DEFAULT_STORE
    device: Literal["auto", "cpu", "cuda"] = "auto"
    phi_salt: str = Field(default=DEMO_SALT, repr=False)
    auth_file: str | None = None
    s3_endpoint_url: str | None = None
    s3_key: str | None = Field(default=None, repr=False)
    s3_secret: str | None = Field(default=None, repr=False)
    s3_region: str | None = None
    dicomweb_user: str | None = None
    dicomweb_password: str | None = Field(default=None, repr=False)
    dicomweb_token: str | None = Field(default=None, repr=False)
    thumb_cache_dir: str = DEFAULT_THUMB_CACHE
    thumb_cache_mb: float = 256.0
    store_retries: int = 4
    store_backoff_s: float = 0.5
    store_timeout_s: float = 30.0
    demo_mode: bool = False
    db_url_readonly: str | None = Field(default=None, repr=False)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        secrets = _SecretsTomlSource(settings_cls, Path(".streamlit/secrets.toml"))
        return (init_settings, env_settings, secrets)


def get_settings(**overrides: Any) -> Settings:
    """Settings with explicit overrides (``None`` values are ignored)."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


# --------------------------------------------------------------------------- OIDC sign-in

OIDC_PROVIDER_KEYS = ("client_id", "client_secret", "server_metadata_url")
"""Keys a provider needs in Streamlit's ``[auth]`` config (``st.login``)."""
_OIDC_SHARED_KEYS = ("redirect_uri", "cookie_secret")


def read_auth_section(path: Path | None = None) -> dict[str, Any]:
    """The ``[auth]`` table of ``.streamlit/secrets.toml`` (empty when absent or unreadable).

    Streamlit's ``st.login`` reads the same table; the app reads it only to know whether
    (and which) OIDC providers are configured, and never shows its values.
    """
    path = SECRETS_PATH if path is None else path
    try:
        with path.open("rb") as fh:
            table = tomllib.load(fh).get("auth", {})
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    return dict(table) if isinstance(table, Mapping) else {}


def oidc_providers(auth: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The OIDC providers configured in Streamlit's ``[auth]`` table, in file order.

    Streamlit's layout: ``redirect_uri`` and ``cookie_secret`` at the top, then either the
    keys of :data:`OIDC_PROVIDER_KEYS` at the top (the unnamed provider, called
    ``"default"``, as ``st.login()`` does) or one sub-table per named provider
    (``[auth.google]`` → ``"google"``). A provider missing a key, or a table without the
    shared keys, does not count: ``st.login`` would refuse it.

    Examples
    --------
    >>> shared = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x"}
    >>> keys = dict.fromkeys(OIDC_PROVIDER_KEYS, "v")
    >>> oidc_providers(shared | keys)
    ('default',)
    >>> oidc_providers(shared | {"google": keys, "okta": {"client_id": "only"}})
    ('google',)
    >>> oidc_providers({"google": keys})
    ()
    """
    if not auth or not all(auth.get(k) for k in _OIDC_SHARED_KEYS):
        return ()
    found: list[str] = []
    if all(auth.get(k) for k in OIDC_PROVIDER_KEYS):
        found.append("default")
    for name, table in auth.items():
        # st.login refuses provider names with underscores.
        if isinstance(table, Mapping) and "_" not in name:
            if all(table.get(k) for k in OIDC_PROVIDER_KEYS):
                found.append(str(name))
    return tuple(found)


def oidc_provider_label(auth: Mapping[str, Any], provider: str) -> str:
    """A name to show on the sign-in button: the provider's name, or for the unnamed one
    the host of its ``server_metadata_url`` (``accounts.google.com``)."""
    if provider != "default":
        return provider
    host = urlparse(str(auth.get("server_metadata_url", ""))).hostname
    return host or "single sign-on"
