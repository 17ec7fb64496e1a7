"""Short stable hashes of JSON-serialisable settings, to key jobs, experiments and caches."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def config_hash(payload: Any) -> str:
    """Short stable hash of a JSON-serialisable payload (sorted keys), to key jobs."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
