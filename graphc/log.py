"""Logging setup: `GRAPHC_LOG=debug` shows each pass (time, node counts) and each compile (cache hit or miss).

graphc's modules log to loggers under "graphc." and never configure handlers themselves;
the CLI, and any entry point that wants the environment to decide, calls configure_from_env().
"""
from __future__ import annotations

import logging
import os
import sys

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "warn": logging.WARNING,
          "error": logging.ERROR, "off": logging.CRITICAL + 1, "none": logging.CRITICAL + 1}
_HANDLER_MARK = "_graphc_handler"


def configure(level: str | int = "warning", stream=None) -> logging.Logger:
    """Send the "graphc" loggers' records at `level` and above to stderr, one line each (idempotent)."""
    if isinstance(level, str):
        key = level.strip().lower()
        if key not in LEVELS:
            raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(sorted(LEVELS))}")
        level = LEVELS[key]
    logger = logging.getLogger("graphc")
    handler = next((h for h in logger.handlers if getattr(h, _HANDLER_MARK, False)), None)
    if handler is None:
        handler = logging.StreamHandler(stream or sys.stderr)
        setattr(handler, _HANDLER_MARK, True)
        handler.setFormatter(logging.Formatter("[%(name)s] %(levelname)s: %(message)s"))
        logger.addHandler(handler)
    elif stream is not None:
        handler.setStream(stream)
    logger.setLevel(level)
    handler.setLevel(level)
    return logger


def configure_from_env(default: str = "warning") -> logging.Logger | None:
    """Configure from GRAPHC_LOG (debug|info|warning|error|off, and/or `recompiles`, comma-separated:
    why eager mode compiled another plan for a call site); an unknown value warns and uses `default`."""
    value = os.environ.get("GRAPHC_LOG", "").strip()
    if not value:
        return configure(default)
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if "recompiles" in parts:
        rest = [p for p in parts if p != "recompiles"]
        logger = configure_from_env_value(rest[0] if rest else default, default)
        logging.getLogger("graphc.recompiles").setLevel(logging.INFO)
        for h in logger.handlers:
            if getattr(h, _HANDLER_MARK, False):
                h.setLevel(min(h.level, logging.INFO))
        return logger
    return configure_from_env_value(value, default)


def configure_from_env_value(value: str, default: str) -> logging.Logger:
    try:
        return configure(value)
    except ValueError as e:
        logger = configure(default)
        logger.warning("GRAPHC_LOG: %s", e)
        return logger
