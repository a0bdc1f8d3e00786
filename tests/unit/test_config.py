"""Configuration loading: precedence, conversion, errors that name key and source, masking."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from ledgerflux.config import (
    Config,
    ConfigError,
    DatabaseConfig,
    Flag,
    GatewayConfig,
    dump_config,
    env_name,
    load_config,
    mask_secret,
)


def write(tmp_path: Path, text: str, name: str = "ledgerflux.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_nothing_configured_gives_the_defaults() -> None:
    assert load_config(env={}) == Config()


def test_file_then_env_then_flags_later_wins(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
log_level = "debug"
data_dir = "/from/file"

[gateway]
port = 9000
host = "0.0.0.0"

[nats]
url = "nats://file:4222"

[ingest]
symbols = ["A-USD", "B-USD"]
""",
    )
    env = {
        "LEDGERFLUX_GATEWAY__PORT": "9001",
        "LEDGERFLUX_NATS__URL": "nats://env:4222",
        "LEDGERFLUX_INGEST__SYMBOLS": "C-USD, D-USD",
        "LEDGERFLUX_LOG_LEVEL": "warning",
    }
    overrides = {"gateway.port": Flag("9002", "--port"), "ingest.symbols": "E-USD"}

    config = load_config(path=path, env=env, overrides=overrides)

    assert config.gateway == attrs.evolve(GatewayConfig(), host="0.0.0.0", port=9002)
    assert config.nats.url == "nats://env:4222"
    assert config.ingest.symbols == ("E-USD",)
    assert config.log_level == "warning"
    assert config.data_dir == "/from/file"


def test_the_file_comes_from_LEDGERFLUX_CONFIG(tmp_path: Path) -> None:
    path = write(tmp_path, "[normalize]\nshards = 4\n")
    config = load_config(env={"LEDGERFLUX_CONFIG": str(path)})
    assert config.normalize.shards == 4


def test_env_strings_are_converted_to_the_key_types() -> None:
    config = load_config(
        env={
            "LEDGERFLUX_NATS__REPLICAS": "3",
            "LEDGERFLUX_INGEST__REPLAY_SPEED": "2.5",
            "LEDGERFLUX_INGEST__REPLAY_LOOP": "yes",
            "LEDGERFLUX_INGEST__CHANNELS": "level2,matches,",
            "LEDGERFLUX_NORMALIZE__SHARD": "1",
            "LEDGERFLUX_INGEST__ENDPOINT": "",
        }
    )
    assert config.nats.replicas == 3
    assert config.ingest.replay_speed == 2.5
    assert config.ingest.replay_loop is True
    assert config.ingest.channels == ("level2", "matches")
    assert config.normalize.shard == 1
    assert config.ingest.endpoint is None


def test_short_env_aliases() -> None:
    config = load_config(
        env={
            "LEDGERFLUX_NATS_URL": "nats://n:4222",
            "LEDGERFLUX_DATABASE_URL": "postgresql://u:pw@db/lf",
            "LEDGERFLUX_S3_ENDPOINT": "http://minio:9000",
            "LEDGERFLUX_DATA_DIR": "/var/lib/ledgerflux",
            "LEDGERFLUX_LOG_LEVEL": "error",
        }
    )
    assert (config.nats.url, config.database.url, config.archive.s3_endpoint) == (
        "nats://n:4222",
        "postgresql://u:pw@db/lf",
        "http://minio:9000",
    )
    assert (config.data_dir, config.log_level) == ("/var/lib/ledgerflux", "error")


def test_test_and_bench_variables_are_not_config_keys() -> None:
    env = {
        "LEDGERFLUX_TEST_NATS_URL": "nats://x:1",
        "LEDGERFLUX_BENCH_EVENTS": "10",
        "LEDGERFLUX_REGEN_GOLDEN": "1",
    }
    assert load_config(env=env) == Config()


def test_secret_from_a_file_named_by_url_file(tmp_path: Path) -> None:
    secret = write(tmp_path, "postgresql://u:pw@db/lf\n", name="db-url")
    from_file = load_config(path=write(tmp_path, f'[database]\nurl_file = "{secret}"\n'), env={})
    from_env = load_config(env={"LEDGERFLUX_DATABASE__URL_FILE": str(secret)})
    assert from_file.database == from_env.database == DatabaseConfig(url="postgresql://u:pw@db/lf")


def test_a_database_url_without_password_may_be_in_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[database]\nurl = "postgresql://ledgerflux@db/lf"\n')
    assert load_config(path=path, env={}).database.url == "postgresql://ledgerflux@db/lf"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[gateway]\nport = 70000\n",
            "gateway.port: expected an integer between 0 and 65535, got 70000 (from {path} line 2)",
        ),
        (
            'log_level = "loud"\n',
            "log_level: expected one of 'debug', 'info', 'warning', 'error', 'critical', "
            "got 'loud' (from {path} line 1)",
        ),
        (
            "[ingest]\nsymbols = [1, 2]\n",
            "ingest.symbols: expected a list of non-empty strings (comma-separated in env and "
            "flags), got [1, 2] (from {path} line 2)",
        ),
        (
            "[nats]\n\nconnect_timeout_s = -1\n",
            "nats.connect_timeout_s: expected a number > 0, got -1 (from {path} line 3)",
        ),
        (
            "[ingest]\nreplay_speed = -0.5\n",
            "ingest.replay_speed: expected a number >= 0, got -0.5 (from {path} line 2)",
        ),
        (
            "[gateway]\nprot = 1\n",
            "gateway.prot: unknown configuration key (from {path} line 2); "
            "did you mean 'gateway.port'?",
        ),
        (
            'nats = "x"\n',
            "nats: expected a table [nats], got 'x' (from {path} line 1)",
        ),
        (
            '[database]\nurl = "postgresql://u:hunter2@db/lf"\n',
            "database.url: secrets are not read from the config file (from {path} line 2); set "
            "env LEDGERFLUX_DATABASE__URL or point database.url_file at a file holding it",
        ),
        (
            '[archive]\nsecret_access_key = "abc"\n',
            "archive.secret_access_key: secrets are not read from the config file (from {path} "
            "line 2); set env LEDGERFLUX_ARCHIVE__SECRET_ACCESS_KEY or point "
            "archive.secret_access_key_file at a file holding it",
        ),
        (
            '[nats]\nurl = "localhost:4222"\n',
            "nats.url: expected a URL starting with nats:// or tls:// or ws:// or wss://, got "
            "'localhost:4222' (from {path} line 2)",
        ),
    ],
)
def test_file_errors_name_key_value_and_line(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path=path, env={})
    assert str(caught.value) == expected.format(path=path)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"LEDGERFLUX_GATEWAY__PORT": "abc"},
            "gateway.port: expected an integer between 0 and 65535, got 'abc' "
            "(from env LEDGERFLUX_GATEWAY__PORT)",
        ),
        (
            {"LEDGERFLUX_INGEST__REPLAY_LOOP": "maybe"},
            "ingest.replay_loop: expected a boolean (true/false), got 'maybe' "
            "(from env LEDGERFLUX_INGEST__REPLAY_LOOP)",
        ),
        (
            {"LEDGERFLUX_SNAPSHOT__FLUSH_INTERVAL_S": "nan"},
            "snapshot.flush_interval_s: expected a number > 0, got 'nan' "
            "(from env LEDGERFLUX_SNAPSHOT__FLUSH_INTERVAL_S)",
        ),
        (
            {"LEDGERFLUX_GATEWAY__PROT": "1"},
            "gateway.prot: unknown configuration key (from env LEDGERFLUX_GATEWAY__PROT); "
            "did you mean 'LEDGERFLUX_GATEWAY__PORT'?",
        ),
        (
            {"LEDGERFLUX_NORMALIZE__SHARD": "2"},
            "normalize.shard: expected an integer below normalize.shards (2, from default), "
            "got 2 (from env LEDGERFLUX_NORMALIZE__SHARD)",
        ),
        (
            {"LEDGERFLUX_INGEST__BACKOFF_INITIAL_S": "60"},
            "ingest.backoff_initial_s: expected at most ingest.backoff_max_s (30.0, from "
            "default), got 60.0 (from env LEDGERFLUX_INGEST__BACKOFF_INITIAL_S)",
        ),
        (
            {"LEDGERFLUX_NATS_URL": "nats://a:1", "LEDGERFLUX_NATS__URL": "nats://b:1"},
            "nats.url: env LEDGERFLUX_NATS_URL and env LEDGERFLUX_NATS__URL disagree; "
            "set only one of them",
        ),
        (
            {"LEDGERFLUX_DATABASE__URL_FILE": "/nonexistent/db-url"},
            "database.url_file: cannot read '/nonexistent/db-url': No such file or directory "
            "(from env LEDGERFLUX_DATABASE__URL_FILE)",
        ),
    ],
)
def test_env_errors_name_key_value_and_variable(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env=env)
    assert str(caught.value) == expected


def test_flag_errors_name_the_flag(tmp_path: Path) -> None:
    path = write(tmp_path, "[normalize]\nshards = 2\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path=path, env={}, overrides={"normalize.shard": Flag("5", "--shard")})
    assert str(caught.value) == (
        f"normalize.shard: expected an integer below normalize.shards (2, from {path} line 2), "
        "got 5 (from --shard)"
    )


def test_override_without_flag_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"got -3 \(from override gateway\.port\)"):
        load_config(env={}, overrides={"gateway.port": -3})


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*No such file"):
        load_config(path=tmp_path / "absent.toml", env={})
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path=write(tmp_path, "[gateway\n"), env={})


@pytest.mark.parametrize(
    ("key", "value", "masked"),
    [
        ("database.url", "postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
        ("database.url", "postgresql://u@h/db", "postgresql://u@h/db"),
        (
            "database.url",
            "postgresql://h/db?password=pw&sslmode=x",
            "postgresql://h/db?password=***&sslmode=x",
        ),
        ("database.url", "host=h password=pw dbname=d", "host=h password=*** dbname=d"),
        ("nats.url", "nats://user:pw@n:4222", "nats://user:***@n:4222"),
        ("archive.secret_access_key", "abc", "***"),
        ("archive.bucket", "ledgerflux", "ledgerflux"),
    ],
)
def test_mask_secret(key: str, value: str, masked: str) -> None:
    assert mask_secret(key, value) == masked


def test_dump_masks_secrets_and_shows_them_on_request() -> None:
    config = load_config(
        env={
            "LEDGERFLUX_DATABASE_URL": "postgresql://u:hunter2@db/lf",
            "LEDGERFLUX_ARCHIVE__SECRET_ACCESS_KEY": "s3cr3t",
        }
    )
    masked = dump_config(config)
    assert 'url = "postgresql://u:***@db/lf"' in masked
    assert 'secret_access_key = "***"' in masked
    assert "hunter2" not in masked
    assert "s3cr3t" not in masked
    plain = dump_config(config, masked=False)
    assert 'url = "postgresql://u:hunter2@db/lf"' in plain


def test_dump_loads_back_to_the_same_config(tmp_path: Path) -> None:
    config = load_config(
        env={
            "LEDGERFLUX_NATS_URL": "nats://n:4222",
            "LEDGERFLUX_INGEST__SYMBOLS": 'BTC-USD,"ODD"\\SYM',
            "LEDGERFLUX_NORMALIZE__SHARD": "1",
        }
    )
    path = write(tmp_path, dump_config(config))
    assert load_config(path=path, env={}) == config


def test_env_name() -> None:
    assert env_name("gateway.port") == "LEDGERFLUX_GATEWAY__PORT"
    assert env_name("data_dir") == "LEDGERFLUX_DATA_DIR"


def test_the_configuration_doc_lists_every_key() -> None:
    from ledgerflux.config import config_keys

    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    missing = [
        key for key in config_keys() if f"| `{key}` |" not in doc or f"`{env_name(key)}`" not in doc
    ]
    assert missing == []
