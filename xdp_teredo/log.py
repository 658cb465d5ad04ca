"""structlog, configured once at start-up.

Console rendering on a terminal, JSON lines otherwise (or as --log-format says).
The standard library's logging (bcc, pyroute2) is routed through the same
processors, so every line of output has one shape. Event names are constant
snake_case words; data goes in keys.
"""

import logging
import sys

import structlog

_LEVELS = {-2: logging.CRITICAL, -1: logging.ERROR, 0: logging.INFO, 1: logging.DEBUG}


def configure(fmt: str = "auto", verbosity: int = 0, stream=None) -> None:
    """Configure structlog and stdlib logging. fmt: auto|console|json."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    level = _LEVELS[max(-2, min(1, verbosity))]

    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())

    structlog.configure(
        processors=shared + [structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def get(name: str = "xdp_teredo"):
    return structlog.get_logger(name)
