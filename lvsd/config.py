"""Reading lvsd's YAML configuration file (the parsing is ``lvs.config``)."""

from __future__ import annotations

from lvs.config import Config, ConfigError, parse_config


def read_config(path: str) -> str:
    """The text of a configuration file; :class:`ConfigError` naming the file
    when it cannot be read or is not UTF-8."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8") from None


def load_config(path: str) -> Config:
    """Read and validate a configuration file."""
    return parse_config(read_config(path), path)
