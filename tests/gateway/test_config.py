"""The YAML configuration: validation with errors that name the key and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.process.cli import main
from gateway.process.config import ConfigError, load_config, parse_config
from gateway.process.defaults import DEFAULT_MODELS, DEFAULT_VIRTUAL_MODELS

REPO = Path(__file__).resolve().parents[2]
PRODUCTION = REPO / "ops" / "config" / "gateway.yaml"

MINIMAL = """\
listen: "127.0.0.1:9000"
models:
  - name: tiny
    backends:
      - url: http://127.0.0.1:5000
"""


def test_production_default_matches_the_default_deployment() -> None:
    config = load_config(PRODUCTION)
    assert config.port == 8000
    assert config.models == DEFAULT_MODELS
    assert config.virtual_models == DEFAULT_VIRTUAL_MODELS
    assert [m.backends[0].url for m in config.models] == [
        f"http://127.0.0.1:{port}" for port in (11400, 11401, 11402, 11403)
    ]


def test_minimal_config_gets_defaults() -> None:
    config = parse_config(MINIMAL)
    assert (config.host, config.port) == ("127.0.0.1", 9000)
    backend = config.models[0].backends[0]
    assert backend.model is None
    assert backend.timeouts.connect == 5.0
    assert config.auth.api_keys == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            MINIMAL.replace("http://127.0.0.1:5000", "ftp://nowhere"),
            "<config>:5: models[0].backends[0].url: must be an http:// or https:// URL",
        ),
        (
            MINIMAL.replace("  - name: tiny", "  - name: tiny\n    colour: red"),
            "<config>:4: models[0].colour: Extra inputs",
        ),
        (
            MINIMAL.replace('"127.0.0.1:9000"', '"nowhere"'),
            '<config>:1: listen: must be "host:port"',
        ),
        ("models: []\n", "<config>:1: models: Tuple should have at least 1 item"),
        (
            MINIMAL + "  - name: tiny\n    backends:\n      - url: http://h:1\n",
            "model id or alias 'tiny' is used twice",
        ),
        (
            MINIMAL.replace("  - name: tiny", '  - name: "tiny\\n"'),  # a trailing newline
            "<config>:3: models[0].name: must be 1-128 of letters",
        ),
        ("- a list\n", "<config>: the configuration must be a mapping"),
        ("models: [\n", "<config>: not valid YAML"),
    ],
)
def test_errors_name_the_key_and_the_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert expected in str(caught.value)


def test_check_config_command(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(PRODUCTION)]) == 0
    assert "OK (4 models" in capfd.readouterr().out
    broken = tmp_path / "broken.yaml"
    broken.write_text(MINIMAL.replace("http://127.0.0.1:5000", "nope"))
    assert main(["check-config", str(broken)]) == 2
    assert f"{broken}:5: models[0].backends[0].url" in capfd.readouterr().err
    assert main(["check-config", str(tmp_path / "missing.yaml")]) == 2


def test_config_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITADEL_CONFIG", str(PRODUCTION))
    assert load_config().port == 8000
    monkeypatch.delenv("CITADEL_CONFIG")
    with pytest.raises(ConfigError, match="CITADEL_CONFIG"):
        load_config()
