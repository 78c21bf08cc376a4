"""schemathesis from outside against the API on 127.0.0.1 (fake handles): every default check passes.

No check is excluded. The Generator of this app dies on every shard (`refusing`), so accepted
instruments fail at once and the run stays short; reference recordings are read by a stub that
returns a valid 0.1 s WAV, since a generated URL names no real server (the real reader is tested
in test_api.py); likewise an uploaded file is replaced by that WAV after the size limits (the real
decoding of uploads is tested in test_api.py). The files route gets no existing instrument here: test_api.py covers it.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from instrumentgen.config import load_config

API_KEY = "schemathesis-key"


def silent_wav(url: str, max_bytes: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(1600), 16000, format="WAV")
    return buffer.getvalue()


def test_schemathesis_default_checks_find_nothing(tmp_path, refusing, make_api, uvicorn_serving):
    overrides = [
        f"serve.storage={tmp_path / 'store'}",
        "serve.shard_retries=0",
        "serve.max_instruments_in_flight=100000",
        f"serve.library={tmp_path / 'library'}",  # configured, no index yet: the listing's parameters are fuzzed
    ]
    cfg = load_config("tiny", overrides)
    cli = Path(sys.executable).with_name("schemathesis")
    uploaded = lambda data: silent_wav("upload", len(data))  # noqa: E731  (a generated file is no recording)
    with uvicorn_serving(make_api(cfg, refusing, [API_KEY], silent_wav, uploaded)) as base:
        run = subprocess.run(
            [str(cli), "run", f"{base}/openapi.json", "-H", f"X-API-Key: {API_KEY}"]
            + ["--max-examples", "20", "--seed", "1", "--workers", "1", "--request-timeout", "30"],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
    summary = run.stdout[-3000:]
    assert run.returncode == 0, summary
    generated = re.search(r"(\d+) generated", summary)
    assert generated and int(generated.group(1)) >= 200, summary
    assert "failure" not in summary.split("SUMMARY")[-1].lower().replace("0 failures", ""), summary
