"""A JSON log formatter for replicarouter's structured log records (see docs/logging.md).

Every record replicarouter logs outside ``replicarouter.testing`` carries ``replicarouter_event`` and,
where they apply, ``replicarouter_cluster``, ``replicarouter_node`` and event-specific fields, as
``extra`` attributes. This formatter prints one JSON object per line with those fields (prefix dropped),
for log pipelines; the plain text message stays readable for people.
"""

from __future__ import annotations

import datetime
import json
import logging

PREFIX = "replicarouter_"


class JSONFormatter(logging.Formatter):
    """Format a record as one line of JSON: time, level, logger, message and its replicarouter fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a JSON object on one line."""
        data: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key.startswith(PREFIX):
                data[key.removeprefix(PREFIX)] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)
