"""Hostile input: the API against its OpenAPI description (schemathesis, live), the
spool decoder against random bytes (hypothesis), and the rules that keep code
execution out of reach (no pickle, registered names only, private files)."""

from __future__ import annotations

import ast
import hmac
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spoolkit.encoding import Envelope, from_spool_dict, to_spool_entries
from spoolkit.errors import DecodeError
from spoolkit.job import new_job_id
from spoolkit.spoolfile import decode_file, encode_file, unpack_vars

from .reporting import SOAK, report
from .support import REPO, UwsgiServer, make_app

PACKAGE = REPO / "spoolkit"


# -- the OpenAPI description -------------------------------------------------------------------


def test_openapi_document_matches_the_routes(eager_app: Flask) -> None:
    spec = eager_app.test_client().get("/jobs/openapi.json").json
    assert spec is not None and spec["openapi"].startswith("3.")
    documented = {
        (path, method.upper())
        for path, item in spec["paths"].items()
        for method in item
        if method != "parameters"
    }
    routed = set()
    for rule in eager_app.url_map.iter_rules():
        if rule.endpoint.startswith("spoolkit.") or rule.endpoint == "spoolkit_health":
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            routed |= {
                (path, method) for method in rule.methods or () if method not in ("HEAD", "OPTIONS")
            }
    assert documented == routed


@pytest.mark.e2e
def test_schemathesis_finds_no_5xx_and_only_json_errors(tmp_path: Path) -> None:
    """Every check except positive_data_acceptance (a schema-valid request naming a
    task that is not registered is rightly a 404, not a 2xx) and use_after_free (DELETE
    /jobs/<id> cancels a job, which stays readable as "cancelled": the documented
    behaviour, not a resource that should be gone). ``--checks all`` turns on every
    check the configuration file disabled, so the exclusions are here."""
    examples = 500 if SOAK else 40
    summary = tmp_path / "schemathesis.json"
    with UwsgiServer(
        tmp_path, SPOOLKIT_API_TOKEN="fuzz-token", SPOOLKIT_LOG_LEVEL="WARNING"
    ) as server:
        done = subprocess.run(
            [str(Path(sys.executable).with_name("schemathesis")),
             "--config-file", str(Path(__file__).with_name("schemathesis.toml")), "run",
             f"http://127.0.0.1:{server.port}/jobs/openapi.json",
             "-H", "Authorization: Bearer fuzz-token",
             "--checks", "all",
             "--exclude-checks", "positive_data_acceptance,use_after_free",
             "--max-examples", str(examples), "--seed", "7", "--workers", "1",
             "--request-timeout", "20",
             "--report", "json", "--report-json-path", str(summary)],
            capture_output=True, text=True, check=False, timeout=900, cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SCHEMATHESIS_TELEMETRY": "false"},
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-6000:]
        assert server.get("/healthz").status == 200
        assert "Traceback" not in server.log_text()
    test_cases = json.loads(summary.read_text())["test_cases"]
    generated, failures = test_cases["generated"], test_cases["unique_failures"]
    report("schemathesis", generated=generated, failures=failures,
           failing_cases=test_cases["with_failures"])  # fmt: skip
    assert generated > 0
    assert failures == test_cases["with_failures"] == 0


# -- the spool decoder -----------------------------------------------------------------------


def _envelope_or_decode_error(spool: dict[Any, Any]) -> Envelope | None:
    try:
        envelope = from_spool_dict(spool)
    except DecodeError:
        return None
    assert isinstance(envelope.args, list) and isinstance(envelope.kwargs, dict)
    return envelope


@settings(max_examples=3000 if SOAK else 300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes_are_rejected_cleanly(data: bytes) -> None:
    try:
        packet, body = decode_file(data)
    except ValueError:
        return
    _envelope_or_decode_error({**packet, "body": body})


VALID_PACKET, VALID_BODY = to_spool_entries(
    "j" * 22, "tests.jobs.add", '{"args":[1,2],"kwargs":{}}'
)


@settings(max_examples=3000 if SOAK else 300)
@given(st.data())
def test_mutated_envelopes_decode_or_fail_with_decode_error(data: st.DataObject) -> None:
    raw = bytearray(encode_file(VALID_PACKET, VALID_BODY))
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    try:
        packet = unpack_vars(bytes(raw[4:]))
    except ValueError:
        return
    _envelope_or_decode_error(packet)


@settings(max_examples=3000 if SOAK else 300)
@given(
    st.dictionaries(
        st.one_of(
            st.sampled_from([b"spoolkit", b"job", b"task", b"payload", "body"]),
            st.binary(max_size=8),
        ),
        st.one_of(
            st.binary(max_size=60), st.sampled_from([b"1", b"j" * 22, b'{"args":[],"kwargs":{}}'])
        ),
        max_size=6,
    )
)
def test_arbitrary_spool_dicts_decode_or_fail_with_decode_error(spool: dict[Any, bytes]) -> None:
    _envelope_or_decode_error(spool)


# -- rules that keep code execution out of reach ------------------------------------------------


FORBIDDEN_MODULES = {"pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle", "jsonpickle"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}


def test_no_pickle_eval_or_dynamic_import_on_the_job_path() -> None:
    for source in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(source.read_text(), filename=str(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [alias.name for alias in node.names]
                module = node.module if isinstance(node, ast.ImportFrom) else None
                assert not ({*(n.split(".")[0] for n in names), module} & FORBIDDEN_MODULES), source
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in FORBIDDEN_CALLS, f"{source}:{node.lineno}"
            if isinstance(node, ast.Attribute) and node.attr == "import_module":
                # Only the operator's own SPOOLKIT_IMPORTS list, never a name from a file or request.
                assert source.name == "extension.py", f"{source}:{node.lineno}"


def test_job_ids_are_unguessable() -> None:
    ids = {new_job_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", job_id) for job_id in ids)


def test_token_is_compared_in_constant_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both a wrong token of the right length (where ``==`` would leak, byte by byte,
    how much matched) and the right one go through ``hmac.compare_digest``."""
    token = "s3cret-token-0123456789"
    wrong = "s3cret-token-0123456780"
    compared: list[list[bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes | str, b: bytes | str) -> bool:
        compared.append(sorted(x.encode() if isinstance(x, str) else bytes(x) for x in (a, b)))
        return real(a, b)  # type: ignore[arg-type]

    # The kit calls it through the module (``hmac.compare_digest``), wherever the check lives.
    monkeypatch.setattr(hmac, "compare_digest", spy)
    client = make_app(tmp_path, SPOOLKIT_EAGER=True, SPOOLKIT_API_TOKEN=token).test_client()
    refused = client.get("/jobs", headers={"Authorization": f"Bearer {wrong}"})
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert sorted([wrong.encode(), token.encode()]) in compared
    compared.clear()
    allowed = client.get("/jobs", headers={"Authorization": f"Bearer {token}"})
    assert allowed.status_code == 200
    assert [token.encode(), token.encode()] in compared


@pytest.mark.e2e
def test_spool_and_store_are_private_to_the_service_user(tmp_path: Path) -> None:
    with UwsgiServer(tmp_path) as server:
        job_id = server.enqueue("echo", "x", countdown=8)
        spool_file = server.spool_file_of(job_id)
        assert spool_file is not None
        assert server.spool_dir.stat().st_mode & 0o777 == 0o700
        assert (server.spool_dir / "quarantine").stat().st_mode & 0o777 == 0o700
        assert spool_file.stat().st_mode & 0o777 == 0o600
        assert server.database.stat().st_mode & 0o777 == 0o600
        priority_file = server.spool_file_of(server.enqueue("echo", "x", countdown=8, priority=3))
        assert priority_file is not None
        assert priority_file.parent.stat().st_mode & 0o777 == 0o700
