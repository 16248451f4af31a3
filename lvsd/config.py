"""Reading lvsd's YAML configuration file (the parsing is ``lvs.config``)."""

from __future__ import annotations

from lvs.config import Config, ConfigError, parse_config


def load_config(path: str) -> Config:
    """Read and validate a configuration file."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8") from None
    return parse_config(text, path)
