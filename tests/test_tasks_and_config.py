"""The @spool decorator, the registry and the settings table."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from flask import Flask

from spoolkit import SpoolKit, runtime, spool
from spoolkit.config import load_config
from spoolkit.errors import ConfigurationError, DuplicateTaskError, TaskNotFound
from spoolkit.registry import TaskRegistry


def test_bare_and_configured_decorator() -> None:
    registry = TaskRegistry()

    @spool(name="plain", registry=registry)
    def plain(x: int) -> int:
        """Doubles."""
        return x * 2

    @spool(name="custom.name", max_attempts=5, backoff=2.5, registry=registry)
    def other() -> None: ...

    assert plain.name == "plain"
    assert plain(21) == 42  # a plain call runs inline
    assert plain.__doc__ == "Doubles."
    assert (plain.policy.max_attempts, plain.policy.backoff) == (3, 1.0)
    assert (other.name, other.policy.max_attempts, other.policy.backoff) == ("custom.name", 5, 2.5)
    assert registry.get("custom.name") is other
    assert registry.names() == ["custom.name", "plain"]
    with pytest.raises(ValueError, match="define tasks at module level"):
        spool(registry=registry)(lambda: None)


def test_bare_spool_uses_the_default_registry() -> None:
    registries = importlib.import_module(TaskRegistry.__module__)
    jobs = importlib.import_module("tests.jobs")
    assert jobs.add.policy.max_attempts == 3
    assert jobs.add(2, 3) == 5
    assert registries.default_registry.get("tests.jobs.add") is jobs.add

    def probe(x: int) -> int:
        return x + 1

    # As if defined at module level under a name nothing else uses: a bare @spool
    # refuses functions defined inside another. The registry cannot forget a task;
    # a second run in one process re-registers the same function, which is allowed.
    probe.__qualname__ = probe.__name__ = "bare_spool_default_registry_probe"
    task = spool(probe)  # exactly what a bare ``@spool`` line does
    assert task.name == f"{__name__}.bare_spool_default_registry_probe"
    assert task.name in registries.default_registry
    assert registries.default_registry.get(task.name) is task
    assert task.name not in TaskRegistry()
    assert (task.policy.max_attempts, task(1)) == (3, 2)


def test_duplicate_names_are_refused_but_reimport_is_fine() -> None:
    registry = TaskRegistry()

    def make() -> object:
        def send() -> None: ...

        return send

    first = spool(name="send", registry=registry)(make())  # type: ignore[arg-type]
    spool(name="send", registry=registry)(make())  # type: ignore[arg-type]  # same code: a re-import
    assert registry.get("send") is not first

    def send() -> None: ...

    with pytest.raises(DuplicateTaskError, match="already taken"):
        spool(name="send", registry=registry)(send)


def test_decorator_options_are_validated_when_declared() -> None:
    registry = TaskRegistry()
    with pytest.raises(ValueError, match="max_attempts"):
        spool(max_attempts=0, registry=registry)
    with pytest.raises(TypeError, match="backoff"):
        spool(backoff="slow", registry=registry)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not allowed"):
        spool(name="has space", registry=registry)(lambda: None)
    with pytest.raises(TypeError, match="name must be"):
        spool(name="", registry=registry)

    async def coroutine() -> None: ...

    with pytest.raises(TypeError, match="async"):
        spool(name="coroutine", registry=registry)(coroutine)


def test_unknown_task_names_the_fix() -> None:
    with pytest.raises(TaskNotFound, match="SPOOLKIT_IMPORTS"):
        TaskRegistry().get("nope")


def test_signature_is_checked_at_enqueue(eager_app: Flask) -> None:
    jobs = importlib.import_module("tests.jobs")
    with eager_app.app_context():
        with pytest.raises(TypeError, match=r"tests.jobs.add\(\): missing a required argument"):
            jobs.add.delay(1)
        with pytest.raises(TypeError, match=r"argument 'b' of task 'tests\.jobs\.add'"):
            jobs.add.delay(1, object())


def test_config_precedence_app_then_environment_then_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = Flask("cfg", root_path=str(tmp_path))
    monkeypatch.setenv("SPOOLKIT_LOCAL_WORKERS", "7")
    monkeypatch.setenv("SPOOLKIT_MAX_BACKOFF", "9.5")
    monkeypatch.setenv("SPOOLKIT_IMPORTS", "a.b, c")
    monkeypatch.setenv("SPOOLKIT_EAGER", "yes")
    app.config["SPOOLKIT_MAX_BACKOFF"] = 60.0
    config = load_config(app)
    assert config.local_workers == 7
    assert config.max_backoff == 60.0  # app.config wins
    assert config.imports == ("a.b", "c")
    assert config.eager is True
    assert config.database == str(tmp_path / "spool" / "spoolkit.db")
    assert config.api_token is None
    assert app.config["SPOOLKIT_LOCAL_WORKERS"] == 7  # effective values are visible


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("SPOOLKIT_EAGER", "maybe", "boolean"), ("SPOOLKIT_LOCAL_WORKERS", "two", "SPOOLKIT_LOCAL_WORKERS"),
     ("SPOOLKIT_LOCAL_WORKERS", "0", "must be > 0"), ("SPOOLKIT_SYNC", "fast", "full, normal"),
     ("SPOOLKIT_DATABASE", "mysql://db/x", "not supported"),
     ("SPOOLKIT_SPOOLER_NICE", "25", "between -20 and 19"),
     ("SPOOLKIT_SPOOLER_NICE", "low", "SPOOLKIT_SPOOLER_NICE")],
)  # fmt: skip
def test_bad_settings_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, value: str, message: str
) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(ConfigurationError, match=message):
        load_config(Flask("cfg", root_path=str(tmp_path)))


def test_init_app_twice_is_refused(eager_app: Flask) -> None:
    with pytest.raises(RuntimeError, match="already set up"):
        SpoolKit(eager_app)


def test_bad_import_is_a_configuration_error(tmp_path: Path) -> None:
    app = Flask("imports")
    app.config.update(SPOOLKIT_DATABASE=str(tmp_path / "j.db"), SPOOLKIT_IMPORTS="no_such_module_x")
    with pytest.raises(ConfigurationError, match="no_such_module_x"):
        SpoolKit(app)


def test_a_spooler_that_may_not_lower_its_nice_says_how_to_allow_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The refusal branch of renice_spooler (the e2e test sees the branch this machine allows)."""

    def refuse(which: int, who: int, value: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(runtime.os, "setpriority", refuse)
    with caplog.at_level("WARNING", logger="spoolkit.runtime"):
        runtime.renice_spooler(3)
    assert "cannot set SPOOLKIT_SPOOLER_NICE=3 (Operation not permitted)" in caplog.text
    assert "LimitNICE=+3" in caplog.text
