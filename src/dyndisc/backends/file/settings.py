"""Settings of the file backend: ``DYN_FILE_KV`` (the shared directory) and ``DYN_FILE_RESCAN_INTERVAL``."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from dyndisc._settings import Settings


def default_root() -> Path:
    """``dyndisc`` under the system temp dir (``$TMPDIR``, else ``/tmp``)."""
    return Path(tempfile.gettempdir()) / "dyndisc"


def reference_root() -> Path:
    """The reference runtime's default file store: ``dynamo_store_kv`` under the system temp dir."""
    return Path(tempfile.gettempdir()) / "dynamo_store_kv"


class FileSettings(Settings):
    """``DYN_FILE_KV`` (the shared directory) and ``DYN_FILE_RESCAN_INTERVAL`` (seconds between rescans)."""

    model_config = SettingsConfigDict(env_prefix="DYN_FILE_", extra="ignore", case_sensitive=False)
    what: ClassVar[str] = "file backend settings"

    kv: Path = Field(default_factory=default_root)
    rescan_interval: Annotated[float, Field(gt=0, le=3600)] = 5.0
