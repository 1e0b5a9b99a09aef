"""The runner's log directory and text logger (mmengine's ``work_dir/<timestamp>/`` layout).

Rank 0 creates ``work_dir/<timestamp>`` (``_1``, ``_2``... appended when it exists) and
writes ``<timestamp>.log`` there; every rank logs to the terminal, ranks other than 0 only
warnings and errors, with their rank in the line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from functrain import ranks as comm  # rank queries and object collectives

__all__ = ["RunLog"]


class RunLog:
    """A run's log directory and logger, made on first use.

    Args:
        work_dir: returns the run's work directory (called when the log directory is made,
            so that a temporary one is created only when something is written).
        timestamp: the run's timestamp (rank 0's on every rank), the log directory's name.
        level: the terminal's level; the file always gets INFO and above.
        name: the :mod:`logging` logger's name (unique per runner).
    """

    def __init__(
        self, work_dir: Callable[[], Path], timestamp: str, level: int | str, name: str
    ) -> None:
        self._work_dir = work_dir
        self.timestamp = timestamp
        self.level = level
        self.name = name
        self._log_dir: Path | None = None
        self._synced = False
        self._logger: logging.Logger | None = None

    @property
    def log_dir(self) -> Path:
        """``work_dir / timestamp`` (``_1``, ``_2``... appended if it exists), created on
        rank 0 only; every rank agrees on the name."""
        if self._log_dir is None:
            base = self._work_dir() / self.timestamp
            candidate, n = base, 1
            if comm.is_main_process():
                while candidate.exists():
                    candidate, n = Path(f"{base}_{n}"), n + 1
                candidate.mkdir(parents=True)
            self._log_dir = candidate
        return self._log_dir

    def sync(self) -> None:
        """Give every rank rank 0's ``log_dir`` (a collective, at the start of a run)."""
        if self._synced or comm.get_world_size() == 1:
            return
        self._log_dir = Path(comm.broadcast_object(str(self.log_dir)))
        self._synced = True

    @property
    def is_open(self) -> bool:
        """Whether the logger has been made (and not closed since)."""
        return self._logger is not None

    @property
    def logger(self) -> logging.Logger:
        """The logger: terminal (and, on rank 0, the text log file)."""
        if self._logger is None:
            self._logger = self._make_logger()
        return self._logger

    def _make_logger(self) -> logging.Logger:
        logger = logging.getLogger(self.name)
        level = logging.getLevelName(self.level) if isinstance(self.level, str) else self.level
        main = comm.is_main_process()
        if not main:
            # Other ranks: warnings and errors on the terminal, no file (mmengine shows
            # only errors there; a rank's own warnings, such as a resume mismatch, help).
            level = max(level, logging.WARNING)
        # The file always gets INFO lines; the level quiets the terminal only.
        logger.setLevel(min(level, logging.INFO) if main else level)
        logger.propagate = False
        rank = "" if main else f"rank {comm.get_rank()} - "
        fmt = logging.Formatter(f"%(asctime)s - functrain - {rank}%(levelname)s - %(message)s")
        terminal = logging.StreamHandler(sys.stdout)
        terminal.setFormatter(fmt)
        terminal.setLevel(level)
        logger.addHandler(terminal)
        if main:
            file = logging.FileHandler(self.log_dir / f"{self.timestamp}.log")
            file.setFormatter(fmt)
            file.setLevel(min(level, logging.INFO))
            logger.addHandler(file)
        return logger

    def close(self) -> None:
        """Close and detach the handlers (the next use makes a new logger)."""
        if self._logger is not None:
            for handler in list(self._logger.handlers):
                handler.close()
                self._logger.removeHandler(handler)
            self._logger = None
