"""Hooks go through pluggy's call loop: ordering, wrappers, and the host's per-plugin isolation."""

from __future__ import annotations

import pytest

import featrob
from featrob.errors import DuplicateNameError
from featrob.plugins import PluginHost


@pytest.fixture
def host() -> PluginHost:
    """A fresh host without entry-point plugins."""
    return PluginHost(load_entry_points=False)


def _run_end(host: PluginHost) -> list[str]:
    return host.call("featrob_run_end", results=object(), context=object())


def _recorder(label: str, calls: list[str], **marks: bool) -> object:
    """A plugin whose run_end and register_metrics hooks append ``label`` to ``calls``."""

    class Recorder:
        @featrob.hookimpl(**marks)
        def featrob_run_end(self, results, context):
            calls.append(label)

        @featrob.hookimpl(**marks)
        def featrob_register_metrics(self, register):
            calls.append(label)
            register(object(), name=f"m-{label}")

    return Recorder()


# ---------------------------------------------------------------------- ordering
def test_lifecycle_hook_follows_pluggy_order(host: PluginHost):
    calls: list[str] = []
    host.add(_recorder("first", calls, tryfirst=True), "a")
    host.add(_recorder("plain-1", calls), "b")
    host.add(_recorder("last", calls, trylast=True), "c")
    host.add(_recorder("plain-2", calls), "d")
    assert _run_end(host) == []
    # tryfirst first, trylast last, otherwise the later-registered plugin first.
    assert calls == ["first", "plain-2", "plain-1", "last"]


def test_registration_hook_follows_pluggy_order(host: PluginHost):
    calls: list[str] = []
    host.add(_recorder("last", calls, trylast=True), "a")
    host.add(_recorder("plain-1", calls), "b")
    host.add(_recorder("plain-2", calls), "c")
    host.add(_recorder("first", calls, tryfirst=True), "d")
    assert host.metrics.names() == ["m-first", "m-last", "m-plain-1", "m-plain-2"]
    assert calls == ["first", "plain-2", "plain-1", "last"]


# ---------------------------------------------------------------------- wrappers
class OldStyleWrapper:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    @featrob.hookimpl(hookwrapper=True)
    def featrob_run_end(self, results, context):
        self.calls.append("old:before")
        outcome = yield
        self.calls.append(f"old:after({len(outcome.get_result())} results)")


class NewStyleWrapper:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    @featrob.hookimpl(wrapper=True)
    def featrob_run_end(self, results, context):
        self.calls.append("new:before")
        result = yield
        self.calls.append("new:after")
        return result


class ReturnsValue:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    @featrob.hookimpl
    def featrob_run_end(self, results, context):
        self.calls.append("impl")
        return "value"


def test_old_and_new_style_wrappers_wrap_the_call(host: PluginHost):
    calls: list[str] = []
    host.add(OldStyleWrapper(calls), "old")
    host.add(ReturnsValue(calls), "impl")
    host.add(NewStyleWrapper(calls), "new")
    assert _run_end(host) == []
    # Wrappers registered later wrap those registered earlier.
    assert calls == ["new:before", "old:before", "impl", "old:after(1 results)", "new:after"]


def test_wrapper_around_a_registration_hook(host: PluginHost):
    calls: list[str] = []

    class Wrapper:
        @featrob.hookimpl(wrapper=True)
        def featrob_register_metrics(self, register):
            calls.append("before")
            register(object(), name="from-wrapper")  # attributed to the wrapper's plugin
            result = yield
            calls.append("after")
            return result

    host.add(_recorder("plain", calls), "plain")
    host.add(Wrapper(), "wrapper")
    assert calls == []  # registries are built on first use
    assert host.metrics.entry("from-wrapper").plugin == "wrapper"
    assert host.metrics.entry("m-plain").plugin == "plain"
    assert calls == ["before", "plain", "after"]


def test_failing_wrapper_fails_the_call_named_after_its_plugin(host: PluginHost):
    calls: list[str] = []

    class BadWrapper:
        @featrob.hookimpl(wrapper=True)
        def featrob_run_end(self, results, context):
            yield
            raise RuntimeError("wrapper broke")

    host.add(_recorder("plain", calls), "plain")
    host.add(BadWrapper(), "bad-wrapper")
    assert _run_end(host) == [
        "plugin 'bad-wrapper' failed in featrob_run_end: RuntimeError: wrapper broke"
    ]
    assert calls == ["plain"]


def test_failing_wrapper_of_a_registration_hook_is_isolated(host: PluginHost):
    calls: list[str] = []

    class BadWrapper:
        @featrob.hookimpl(wrapper=True)
        def featrob_register_metrics(self, register):
            register(object(), name="half")
            raise RuntimeError("wrapper broke")
            yield  # a generator, as pluggy requires of wrappers

    host.add(_recorder("plain", calls), "plain")
    host.add(BadWrapper(), "bad-wrapper")
    assert host.metrics.names() == ["m-plain"]
    assert "RuntimeError: wrapper broke (in featrob_register_metrics)" in (
        host.plugins["bad-wrapper"].error or ""
    )
    assert host.plugins["plain"].ok and host.plugins["plain"].registers == {"metrics": ["m-plain"]}


# ---------------------------------------------------------------------- isolation
class FailsInRunEnd:
    @featrob.hookimpl
    def featrob_run_end(self, results, context):
        raise ValueError("run end broke\nsecond line")


def test_failing_lifecycle_hook_is_reported_and_others_run(host: PluginHost):
    calls: list[str] = []
    host.add(_recorder("before", calls), "before")
    host.add(FailsInRunEnd(), "bad")
    host.add(_recorder("after", calls), "after")
    assert _run_end(host) == ["plugin 'bad' failed in featrob_run_end: ValueError: run end broke"]
    assert calls == ["after", "before"]
    assert host.plugins["bad"].ok  # a lifecycle failure does not mark the plugin broken


def test_failing_registration_hook_marks_only_that_plugin_broken(host: PluginHost):
    calls: list[str] = []

    class Broken:
        @featrob.hookimpl
        def featrob_register_metrics(self, register):
            register(object(), name="half")
            raise RuntimeError("boom")

        @featrob.hookimpl
        def featrob_run_end(self, results, context):
            calls.append("broken plugin ran")

    host.add(_recorder("good", calls), "good")
    host.add(Broken(), "bad")
    assert host.metrics.names() == ["m-good"]  # "half" was rolled back
    info = host.plugins["bad"]
    assert not info.ok and info.error == "RuntimeError: boom (in featrob_register_metrics)"
    assert "Traceback" in (info.traceback or "")
    assert host.plugins["good"].registers == {"metrics": ["m-good"]}
    calls.clear()
    assert _run_end(host) == []
    assert calls == ["good"]  # broken plugins are skipped


def test_hook_arguments_an_impl_does_not_declare_are_fine(host: PluginHost):
    seen: list[object] = []

    class OnlyContext:
        @featrob.hookimpl
        def featrob_run_end(self, context):
            seen.append(context)

    host.add(OnlyContext(), "only-context")
    assert host.call("featrob_run_end", results=1, context=2) == []
    assert seen == [2]


# ---------------------------------------------------------------------- register provenance
def test_register_is_bound_to_the_calling_plugin(host: PluginHost):
    def plugin(*names: str) -> object:
        class Plugin:
            @featrob.hookimpl
            def featrob_register_attacks(self, register):
                for name in names:
                    register(object(), name=name)

        return Plugin()

    host.add(plugin("a1", "a2"), "alpha")
    host.add(plugin("b1"), "beta")
    assert {e.name: e.plugin for e in host.attacks} == {"a1": "alpha", "a2": "alpha", "b1": "beta"}
    assert host.plugins["alpha"].registers == {"attacks": ["a1", "a2"]}
    assert host.plugins["beta"].registers == {"attacks": ["b1"]}


def test_register_outside_a_hook_is_an_error(host: PluginHost):
    kept = []

    class Keeps:
        @featrob.hookimpl
        def featrob_register_metrics(self, register):
            kept.append(register)

    host.add(Keeps(), "keeps")
    host.build_all()
    with pytest.raises(RuntimeError, match="outside a plugin's registration hook"):
        kept[0](object(), name="late")


def test_duplicate_names_still_raise_naming_both_plugins(host: PluginHost):
    class Same:
        @featrob.hookimpl
        def featrob_register_metrics(self, register):
            register(object(), name="same")

    host.add(Same(), "one")
    host.add(Same(), "two")
    with pytest.raises(DuplicateNameError) as err:
        host.metrics  # noqa: B018
    assert "'one'" in str(err.value) and "'two'" in str(err.value)


# ---------------------------------------------------------------------- direct pluggy calls
def test_direct_pluggy_call_raises(host: PluginHost):
    calls: list[str] = []
    host.add(_recorder("plain", calls), "plain")
    host.add(FailsInRunEnd(), "bad")
    _run_end(host)  # a guarded host call first: the guard must not leak into direct calls
    with pytest.raises(ValueError, match="run end broke"):
        host.pm.hook.featrob_run_end(results=object(), context=object())
