"""Loggers that continue a resumed run's history instead of starting it again."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger as _CSVLogger

log = logging.getLogger(__name__)


class CSVLogger(_CSVLogger):
    """Lightning's CSVLogger, which deletes an existing metrics.csv; given `resume_step` it keeps the rows
    logged before that step and appends after them (the rows a killed run wrote later are trained again)."""

    def __init__(self, *args, resume_step: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step

    @property
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / "metrics.csv"
        fields, kept = [], []
        if self.resume_step is not None and path.is_file():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                fields = list(reader.fieldnames or [])
                kept = [r for r in reader if r.get("step") and int(float(r["step"])) < self.resume_step]
        writer = super().experiment  # removes metrics.csv
        if kept and writer is not None:
            with path.open("w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=fields)
                out.writeheader()
                out.writerows(kept)
            writer.metrics_keys = sorted(fields)
            log.info("metrics.csv continues after step %d (%d earlier rows kept)", self.resume_step - 1, len(kept))
        return writer
