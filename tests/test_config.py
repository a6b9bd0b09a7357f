import pytest

from assistant.config import Settings, SettingsError, load_settings, settings_table


def test_defaults_and_derived_values(tmp_path):
    s = load_settings({"ASSISTANT_DATA_DIR": str(tmp_path), "ASSISTANT_CONFIG": str(tmp_path / "x.toml")})
    assert s.uses_local_model
    assert s.resolved_database_url == f"sqlite:///{tmp_path / 'assistant.db'}"
    assert s.model_for("agent") == s.model


def test_role_override_and_endpoint(tmp_path):
    s = load_settings({"ASSISTANT_AGENT_MODEL": "big", "ASSISTANT_MODEL": "small", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
                       "ASSISTANT_CONFIG": str(tmp_path / "x.toml")})
    assert s.model_for("agent") == "big" and s.model_for("router") == "small"
    assert not s.uses_local_model


@pytest.mark.parametrize("var,value,needle", [
    ("ASSISTANT_MAX_CONCURRENT_JOBS", "lots", "ASSISTANT_MAX_CONCURRENT_JOBS='lots'"),
    ("ASSISTANT_MAX_CONCURRENT_JOBS", "0", "greater than or equal to 1"),
    ("ASSISTANT_SANDBOX_BACKEND", "vm", "'auto', 'docker' or 'local'"),
    ("ASSISTANT_SETUP_CACHE", "maybe", "expected true or false"),
    ("ASSISTANT_USERS", "alice", "name:password"),
    ("ASSISTANT_PORT", "70000", "ASSISTANT_PORT"),
])
def test_bad_values_name_the_variable(tmp_path, var, value, needle):
    with pytest.raises(SettingsError) as err:
        load_settings({var: value, "ASSISTANT_CONFIG": str(tmp_path / "x.toml")})
    assert needle in str(err.value)
    assert var in str(err.value)


def test_toml_then_env_precedence(tmp_path):
    toml = tmp_path / "assistant.toml"
    toml.write_text('max_concurrent_jobs = 7\nmodel = "from-toml"\n')
    s = load_settings({"ASSISTANT_CONFIG": str(toml), "ASSISTANT_MODEL": "from-env"})
    assert s.max_concurrent_jobs == 7 and s.model == "from-env"
    toml.write_text("no_such_setting = 1\n")
    with pytest.raises(SettingsError, match="unknown setting 'no_such_setting'"):
        load_settings({"ASSISTANT_CONFIG": str(toml)})


def test_every_setting_is_documented_in_the_readme():
    from pathlib import Path
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [row.env for row in settings_table() if row.env not in readme]
    assert not missing, f"README lacks: {missing}"
    assert all(row.description for row in settings_table())
    assert len(settings_table()) == len(Settings.model_fields)


def test_webhook_settings_are_read_and_bad_urls_are_named(tmp_path):
    settings = load_settings({"ASSISTANT_WEBHOOK_URLS": " https://a.example.org/h , http://127.0.0.1:9/x,https://a.example.org/h",
                              "ASSISTANT_PUBLIC_URL": "https://assistant.example.org/", "ASSISTANT_CONFIG": str(tmp_path / "n.toml")})
    assert settings.webhook_targets() == ("https://a.example.org/h", "http://127.0.0.1:9/x")
    assert settings.public_base_url == "https://assistant.example.org" and settings.webhook_attempts == 3
    for name, value in (("ASSISTANT_WEBHOOK_URLS", "https://ok.example.org,hooks.example.org/x"),
                        ("ASSISTANT_PUBLIC_URL", "ftp://assistant.example.org")):
        with pytest.raises(SettingsError, match=f"{name}=.*is not an http\\(s\\) URL; write e.g. https://"):
            load_settings({name: value, "ASSISTANT_CONFIG": str(tmp_path / "n.toml")})
    with pytest.raises(SettingsError, match="ASSISTANT_WEBHOOK_ATTEMPTS='0'"):
        load_settings({"ASSISTANT_WEBHOOK_ATTEMPTS": "0", "ASSISTANT_CONFIG": str(tmp_path / "n.toml")})
