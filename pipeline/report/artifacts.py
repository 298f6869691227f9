"""The stage runs' artifacts the page shows (figures, notes, summaries), each folder downloaded once."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pipeline.tracking import FIGURES   # Tracker.log_figure: figures/<name>.png


def quiet_downloads():
    """A context in which MLflow downloads print no progress bar."""
    from pipeline.tracking import env_set

    return env_set("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class Artifacts:
    """A run's artifacts, downloaded once into a temporary folder."""

    def __init__(self, client, tmp: Path):
        self.client, self.tmp = client, tmp
        self._folders: dict = {}

    def folder(self, run_id: str, folder: str) -> dict:
        """``{file name: local path}`` of the files directly under ``folder`` of the run."""
        key = (run_id, folder)
        if key not in self._folders:
            try:
                self._folders[key] = self._download(run_id, folder)
            except Exception:  # noqa: BLE001  (no such folder, an unreachable artifact store: nothing to show)
                self._folders[key] = {}
        return self._folders[key]

    def _download(self, run_id: str, folder: str) -> dict:
        """Download ``folder`` of the run (when it has files) and name its files."""
        entries = [e for e in self.client.list_artifacts(run_id, folder) if not e.is_dir]
        if not entries:
            return {}
        dst = self.tmp / run_id / folder.replace("/", "_")
        dst.mkdir(parents=True, exist_ok=True)
        with quiet_downloads():
            local = Path(self.client.download_artifacts(run_id, folder, str(dst)))
        return {Path(e.path).name: local / Path(e.path).name for e in entries}

    def read(self, run_id: str, path: str) -> Optional[bytes]:
        """One artifact's bytes (None when the run has no such file)."""
        folder, _, name = path.rpartition("/")
        try:
            if name not in {Path(e.path).name for e in self.client.list_artifacts(run_id, folder or None)}:
                return None
            dst = self.tmp / run_id / "files"
            dst.mkdir(parents=True, exist_ok=True)
            with quiet_downloads():
                return Path(self.client.download_artifacts(run_id, path, str(dst))).read_bytes()
        except Exception:  # noqa: BLE001  (an unreachable artifact store: nothing to show)
            return None

    def figures(self, run_id: str) -> dict:
        """``{figure name: PNG bytes}`` of ``figures/<name>.png``, sorted by name."""
        out = {}
        for name, path in sorted(self.folder(run_id, FIGURES).items()):
            if name.endswith(".png") and path.exists():
                out[name[:-4]] = path.read_bytes()
        return out
