"""Service settings (service/config.py): IMDN_* variables, comma lists, validation, derived values."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.config import Settings


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_comma_lists_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMDN_MODELS", " x2, as ,")
    monkeypatch.setenv("IMDN_CORS_ORIGINS", "https://a.example,https://b.example")
    loaded = settings()
    assert loaded.models == ["x2", "as"]
    assert loaded.cors_origins == ["https://a.example", "https://b.example"]


@pytest.mark.parametrize("models", ["x5", "x2,x9", ""])
def test_unknown_or_no_models_refused(models: str) -> None:
    with pytest.raises(ValidationError, match="models must be"):
        settings(models=models)


def test_frame_ancestors_quoted_or_refused() -> None:
    assert settings(frame_ancestors="self https://portal.example.com").frame_ancestors == \
        "'self' https://portal.example.com"
    for value in ("'none' https://a.example", "<script>", ""):
        with pytest.raises(ValidationError, match="frame_ancestors"):
            settings(frame_ancestors=value)


def test_concurrency_is_two_per_replica_unless_set() -> None:
    assert settings(replicas_per_device=3).concurrency == 6
    assert settings(replicas_per_device=3, max_concurrent=5).concurrency == 5
