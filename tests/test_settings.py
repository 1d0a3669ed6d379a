from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from core.settings import Settings
from tests.conftest import REPO


def test_env_example_lists_every_field():
    listed = set(re.findall(r"^#?\s*ANIBOT_([A-Z0-9_]+)=", (REPO / ".env.example").read_text(), re.M))
    assert listed == {name.upper() for name in Settings.model_fields}


def test_settings_read_environment_and_hide_tokens(monkeypatch):
    monkeypatch.setenv("ANIBOT_DISCORD_TOKEN", "very-secret")
    monkeypatch.setenv("ANIBOT_TOP_N", "7")
    settings = Settings()
    assert settings.top_n == 7
    assert "very-secret" not in repr(settings) and "very-secret" not in str(settings.model_dump())
    assert settings.discord_token is not None and settings.discord_token.get_secret_value() == "very-secret"


def test_bad_values_fail_loudly(monkeypatch):
    monkeypatch.setenv("ANIBOT_DEVICE", "tpu")
    with pytest.raises(ValidationError):
        Settings()


def test_visibility_timeout_must_outlast_the_longest_task():
    from workers.celery_app import ConfigurationError, make_app

    with pytest.raises(ConfigurationError):
        make_app(Settings(task_time_limit_s=600, visibility_timeout_s=300))
    app = make_app(Settings())
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.task_serializer == "json"
    assert app.conf.broker_transport_options["visibility_timeout"] > app.conf.task_time_limit


def test_discord_admin_roles_are_role_ids_by_server():
    settings = Settings(_env_file=None, discord_admin_roles=" 111:222, 111:333,444 : 555 ")
    assert settings.discord_admin_role_ids == {111: frozenset({222, 333}), 444: frozenset({555})}
    assert Settings(_env_file=None).discord_admin_role_ids == {}
    for bad in ("anibot admins", "111", "111:admins", "111:222:333"):  # a role name is refused, loudly
        with pytest.raises(ValidationError, match="server id>:<role id"):
            Settings(_env_file=None, discord_admin_roles=bad)


def test_blank_tokens_are_no_tokens(monkeypatch):
    for name in ("ANIBOT_DISCORD_TOKEN", "ANIBOT_TELEGRAM_TOKEN", "ANIBOT_API_TOKEN", "HF_TOKEN"):
        monkeypatch.setenv(name, " ")
    settings = Settings(_env_file=None)
    assert (settings.discord_token, settings.telegram_token, settings.api_token, settings.hf_token) == (
        None,
    ) * 4
