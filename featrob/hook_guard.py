"""The guard the plugin host puts around every hook implementation.

Hooks are called through pluggy's own call loop, so ordering and wrappers behave as in any
pluggy project; the guard adds what featrob needs on top: it skips plugins marked broken,
tells ``register`` which plugin is registering, and, while the host collects failures
(:func:`collecting`), records an implementation's exception against its plugin and returns
None (which pluggy ignores) so the other plugins still run. Outside a host call an
implementation raises as usual. Wrappers are not isolated: one that raises fails the call,
and the sink notes which plugin raised it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from featrob.registry import Registry

if TYPE_CHECKING:
    from featrob.plugins import PluginInfo

#: Attribute that marks a guarded hook implementation (its value: the plugin name).
GUARD_MARK = "_featrob_plugin"

#: Name of the plugin whose hook implementation is running (read by ``register``).
_CURRENT_PLUGIN: ContextVar[str | None] = ContextVar("featrob_current_plugin", default=None)


@dataclass
class _Sink:
    """Failures collected while the host calls a hook.

    Attributes:
        propagate: exception types that are raised rather than collected.
        failures: ``(plugin, exception)`` of implementations that raised (and returned None).
        raised: ``(plugin, exception)`` of wrappers whose exception failed the call.
    """

    propagate: tuple[type[Exception], ...] = ()
    failures: list[tuple[str, Exception]] = field(default_factory=list)
    raised: list[tuple[str, BaseException]] = field(default_factory=list)

    def raised_by(self, exc: BaseException) -> str | None:
        """The plugin whose wrapper raised ``exc`` (None when no wrapper did)."""
        return next((name for name, e in self.raised if e is exc), None)


#: The sink of the host call in progress; None outside one (exceptions then raise).
_SINK: ContextVar[_Sink | None] = ContextVar("featrob_hook_sink", default=None)


@contextmanager
def collecting(propagate: tuple[type[Exception], ...] = ()) -> Iterator[_Sink]:
    """Collect implementations' exceptions instead of raising them (within the block)."""
    sink = _Sink(propagate)
    token = _SINK.set(sink)
    try:
        yield sink
    finally:
        _SINK.reset(token)


def register_into(registry: Registry[Any]) -> Callable[..., Any]:
    """The ``register`` callable of a registration hook: adds to ``registry`` on behalf of
    the plugin whose implementation is running."""

    def register(obj: Any, name: str | None = None, **options: Any) -> Any:
        plugin = _CURRENT_PLUGIN.get()
        if plugin is None:
            raise RuntimeError(
                f"register() of the {registry.kind} registry was called outside a plugin's "
                "registration hook"
            )
        return registry.add(obj, name, plugin=plugin, **options)

    return register


def guarded(
    function: Callable[..., Any],
    plugin: str,
    plugins: dict[str, PluginInfo],
    *,
    wrapper: bool,
) -> Callable[..., Any]:
    """``function`` (a hook implementation of ``plugin``) behind the host's guard.

    The guard skips the implementation while the plugin is marked broken in ``plugins`` and
    sets :data:`_CURRENT_PLUGIN` while it runs. A plain implementation's exception is
    collected in the active :class:`_Sink` (the guard then returns None, which pluggy ignores)
    unless no sink is active or the sink propagates that type. A wrapper's exception always
    propagates; the sink notes which plugin raised it.
    """
    if wrapper:

        @functools.wraps(function)
        def guarded_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            if is_broken(plugins, plugin):
                return (yield)  # pass the result (or exception) through untouched
            return (yield from _bound_generator(function, plugin, args, kwargs))

        setattr(guarded_wrapper, GUARD_MARK, plugin)
        return guarded_wrapper

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if is_broken(plugins, plugin):
            return None
        token = _CURRENT_PLUGIN.set(plugin)
        try:
            return function(*args, **kwargs)
        except Exception as exc:
            sink = _SINK.get()
            if sink is None or isinstance(exc, sink.propagate):
                raise
            sink.failures.append((plugin, exc))
            return None
        finally:
            _CURRENT_PLUGIN.reset(token)

    setattr(guarded, GUARD_MARK, plugin)
    return guarded


def _bound_generator(
    function: Callable[..., Generator[Any, Any, Any]],
    plugin: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Generator[Any, Any, Any]:
    """Run the wrapper ``function(*args, **kwargs)`` step by step with ``plugin`` current.

    Values sent and exceptions thrown in are forwarded to the wrapper. An exception the
    wrapper raises itself (not one thrown in and passed on) is noted in the active sink.
    """
    gen: Generator[Any, Any, Any] | None = None
    send: Any = None
    throw: BaseException | None = None
    while True:
        token = _CURRENT_PLUGIN.set(plugin)
        try:
            if gen is None:
                gen = function(*args, **kwargs)
                step = next(gen)
            elif throw is None:
                step = gen.send(send)
            else:
                step = gen.throw(throw)
        except StopIteration as stop:
            return stop.value
        except BaseException as exc:
            sink = _SINK.get()
            if sink is not None and exc is not throw:
                sink.raised.append((plugin, exc))
            raise
        finally:
            _CURRENT_PLUGIN.reset(token)
        try:
            send, throw = (yield step), None
        except GeneratorExit:
            gen.close()
            raise
        except BaseException as exc:
            send, throw = None, exc


def is_broken(plugins: dict[str, PluginInfo], plugin: str) -> bool:
    info = plugins.get(plugin)
    return info is not None and not info.ok
