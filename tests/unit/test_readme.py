"""The README's worker and frontend run as written, as two processes sharing the file backend."""

from __future__ import annotations

import os
import re
from pathlib import Path

from worker_frontend import run_worker_and_frontend

ROOT = Path(__file__).resolve().parents[2]


def readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_a_worker_and_a_frontend_of_about_twenty_lines() -> None:
    worker, frontend = readme_blocks()[:2]
    assert "register(" in worker
    assert "client()" in frontend
    assert len(worker.splitlines()) <= 22
    assert len(frontend.splitlines()) <= 22


def test_readme_worker_and_frontend_run_as_written(tmp_path: Path) -> None:
    worker_code, frontend_code = readme_blocks()[:2]
    (tmp_path / "worker.py").write_text(worker_code)
    (tmp_path / "frontend.py").write_text(frontend_code)
    env = {
        **os.environ,
        "DYN_DISCOVERY_BACKEND": "file",
        "DYN_FILE_KV": str(tmp_path / "kv"),
        "DYN_LEASE_TTL": "2",
    }
    run_worker_and_frontend(tmp_path, env, timeout=60, stop_timeout=30)


def test_readme_links_point_at_files_that_exist() -> None:
    # The docs' own links are checked by the strict site build (mkdocs.yml: validation); the README's here.
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local, "the README links to no page of the docs"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert missing == []
