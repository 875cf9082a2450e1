"""Runtime settings, read from the environment (``QUALITY_*``) or ``.streamlit/secrets.toml``.

Library code never reads settings itself: the CLI and the app read them once and pass
engines, sessions and stores down.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = ["DEFAULT_DB_URL", "DEFAULT_STORE", "Settings", "get_settings"]

DEFAULT_DB_URL = "sqlite:///data_samples/demo.db"
DEFAULT_STORE = "data_samples/dicom"
DEMO_SALT = "quality-workbench-demo-salt"
DEFAULT_THUMB_CACHE = str(Path.home() / ".cache" / "quality-workbench" / "thumbs")


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
    """

    model_config = SettingsConfigDict(env_prefix="QUALITY_", extra="ignore")

    db_url: str = DEFAULT_DB_URL
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
