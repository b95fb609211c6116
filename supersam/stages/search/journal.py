"""The search journal: every evaluated subnet appended as it is evaluated, so a search can resume.

``<out>/candidates.partial.jsonl`` holds one JSON line per evaluated subnet after a
header line with the search's fingerprint (a SHA-256 over the supernet's content,
the searched space, the constraints, metric, technique, seed and the validation
sample's settings; the budget and time limit are not part of it, so a resumed
search may be given more). Each line is flushed and fsynced as it is written: a
Ctrl-C or ``kill -9`` loses at most the subnet being evaluated.

``search --resume`` replays the journal: the technique (seeded OpenTuner or random
search) proposes the same subnets in the same order, the journaled ones are
answered from the journal without evaluation, and the search goes on from where
it stopped, so the result equals an uninterrupted search's. The journal is
removed when the search finishes (candidates.json then holds every candidate).
docs/contracts.md, "Failures".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from supersam.runtime.errors import ConfigError
from supersam.runtime.io import write_text

log = logging.getLogger(__name__)

JOURNAL_FILE = "candidates.partial.jsonl"
FORMAT = "supersam-search-journal/1"


def fingerprint(identity: dict[str, Any]) -> str:
    """SHA-256 (hex) of the JSON of ``identity`` (keys sorted)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def subnet_key(subnet: Any) -> str:
    """Canonical JSON of a subnet (its ``to_dict()`` when it has one), the journal's key."""
    data = subnet.to_dict() if hasattr(subnet, "to_dict") else subnet
    return json.dumps(data, sort_keys=True)


class SearchJournal:
    """Append-only record of one search's evaluations (see the module docstring).

    Args:
        out: the search's output folder.
        identity: what a resumed search must share (hashed by :func:`fingerprint`).
        resume: True continues the journal in ``out`` (refusing another search's);
            ``"auto"`` continues it only when it is this search's, else starts afresh;
            False starts a new one (a previous journal is replaced, with a log line).

    Raises:
        ConfigError: ``resume`` and the journal belongs to another search (or is unreadable).
    """

    def __init__(self, out: str | Path, identity: dict[str, Any], resume: bool | str = False) -> None:
        self.path = Path(out) / JOURNAL_FILE
        self.fingerprint = fingerprint(identity)
        self.replay: dict[str, dict[str, float]] = {}
        read = None
        if resume and self.path.is_file():
            try:
                read = self._read()
            except ConfigError as exc:
                if resume != "auto":
                    raise
                log.info("starting the search afresh, not resuming: %s", exc)
        if read is not None:
            header, entries = read
            self.replay = {e["key"]: e["result"] for e in entries}
            # rewritten without a line an interruption may have cut, so appends start on a new line
            write_text(self.path, "".join(json.dumps(x) + "\n" for x in (header, *entries)))
            log.info("resuming the search: %d evaluated subnets in %s", len(self.replay), self.path)
        else:
            if resume:
                log.info("no interrupted search in %s: starting afresh", self.path.parent)
            elif self.path.is_file():
                log.info("replacing the journal of an earlier interrupted search (pass --resume to continue one)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w") as fh:
                fh.write(json.dumps({"format": FORMAT, "fingerprint": self.fingerprint}) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        self._fh = open(self.path, "a")

    def _read(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise ConfigError(
                f"{self.path} holds bytes that are not UTF-8 text, so it is not a supersam search "
                "journal; remove it or search without --resume"
            ) from None
        try:
            header = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            header = {}
        if header.get("format") != FORMAT:
            raise ConfigError(f"{self.path} is not a supersam search journal; remove it or search without --resume")
        if header.get("fingerprint") != self.fingerprint:
            raise ConfigError(
                f"cannot resume the search in {self.path.parent}: it was run on another supernet, "
                "space, constraint, seed or data sample; search without --resume (or restore them)"
            )
        entries = []
        for number, line in enumerate(lines[1:], start=2):
            try:
                entry = json.loads(line)
                entries.append({"key": str(entry["key"]), "result": dict(entry["result"])})
            except (json.JSONDecodeError, KeyError, TypeError):
                if number == len(lines):  # the last line was cut by the interruption: drop it
                    log.info("dropping the journal's incomplete last line")
                    break
                raise ConfigError(
                    f"{self.path} line {number} is damaged; remove the file and search without --resume"
                ) from None
        return header, entries

    def lookup(self, subnet: Any) -> dict[str, float] | None:
        """The journaled result of ``subnet`` (replayed on resume), else None."""
        return self.replay.get(subnet_key(subnet))

    def append(self, subnet: Any, result: dict[str, float]) -> None:
        """Record ``subnet``'s result durably (flushed and fsynced)."""
        self._fh.write(json.dumps({"key": subnet_key(subnet), "result": result}) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self, finished: bool) -> None:
        """Close the file; remove it when the search ``finished`` (its artifacts hold every candidate)."""
        self._fh.close()
        if finished:
            self.path.unlink(missing_ok=True)
