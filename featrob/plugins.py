"""Finding, loading and asking plugins.

Every plugin, the built-in ones included, is found through the ``featrob`` entry-point
group (``[project.entry-points.featrob]`` in a pyproject). Loading happens once, lazily, and
each plugin is loaded in its own try/except: a plugin that fails to import is recorded with
its error instead of breaking ``featrob --help``; a run that needs it fails naming it.

Registries (models, attacks, metrics, ...) are built on first use by calling the
``featrob_register_*`` hook with a ``register`` callable that records the name of the plugin
whose implementation is running, so every entry knows which plugin provided it.

Every hook is called through pluggy's own call loop (``pm.hook.NAME(**kwargs)``), so call
order (``tryfirst``/``trylast``; otherwise later-registered plugins first) and hook wrappers
(``hookwrapper=True`` and ``wrapper=True``) behave as in any pluggy project. Isolation of
plugins comes from a guard the host puts around each plugin's hook implementations: it skips
plugins marked broken and sets the current plugin for ``register``; while the host collects
failures (in :meth:`PluginHost.registry` and :meth:`PluginHost.call`) it records an
implementation's exception against its plugin and lets the other plugins run. Called directly
(``host.pm.hook.NAME(...)``), implementations raise as usual. Wrappers are not isolated: one
that raises fails the whole call, reported against its plugin.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from featrob import hookspecs
from featrob.errors import DuplicateNameError, PluginLoadError, UnknownNameError
from featrob.hook_guard import GUARD_MARK, collecting, guarded, register_into
from featrob.registry import Registry

ENTRY_POINT_GROUP = "featrob"
CORE_DISTRIBUTION = "featrob"
#: Entry points of the core itself (models, data sets, attacks, ...): always loaded.
CORE_MODULES = "featrob.builtins."
#: Environment variable with a comma-separated allow-list of entry-point plugins to load.
ALLOW_ENV = "FEATROB_PLUGINS"


def allowed_plugins() -> set[str] | None:
    """The allow-list of ``$FEATROB_PLUGINS`` (None when unset: load every plugin).

    With ``FEATROB_PLUGINS=scale,collision`` only those entry points load, besides the core's
    own built-ins; plugins given by path or module (``--plugin my_plugin.py``) still load.
    """
    raw = os.environ.get(ALLOW_ENV)
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


#: kind -> (registration hook, singular noun used in messages)
KINDS: dict[str, tuple[str, str]] = {
    "models": ("featrob_register_models", "model"),
    "heads": ("featrob_register_heads", "head"),
    "datasets": ("featrob_register_datasets", "data set"),
    "attacks": ("featrob_register_attacks", "attack"),
    "metrics": ("featrob_register_metrics", "metric"),
    "reporters": ("featrob_register_reporters", "reporter"),
    "training_methods": ("featrob_register_training_methods", "training method"),
}


@dataclass
class PluginInfo:
    """What ``featrob plugins`` shows about one plugin.

    Attributes:
        name: plugin name (the entry-point name, or the module/file stem).
        source: ``"built-in"`` (entry point of featrob itself), ``"entry point"`` (another
            installed distribution), ``"file"``, ``"module"`` or ``"object"`` (added in code).
        target: what was loaded (``featrob.builtins.attacks``, a file path, ...).
        distribution, version: the providing distribution, when known.
        error: one-line error if the plugin failed to load or register.
        traceback: the full traceback of that failure.
        registers: ``{kind: [names]}`` once registries are built.
    """

    name: str
    source: str
    target: str
    distribution: str | None = None
    version: str | None = None
    error: str | None = None
    traceback: str | None = None
    registers: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """False when the plugin failed to load or register."""
        return self.error is None


def new_plugin_manager() -> pluggy.PluginManager:
    """A pluggy manager that knows featrob's hook specs and no plugin."""
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    return pm


class PluginHost:
    """Plugins and the registries they fill.

    Args:
        load_entry_points: discover plugins through the ``featrob`` entry-point group
            (tests pass False and add in-memory plugins with :meth:`add`).
    """

    def __init__(self, *, load_entry_points: bool = True) -> None:
        self.pm = new_plugin_manager()
        self._plugins: dict[str, PluginInfo] = {}
        self._load_entry_points = load_entry_points
        self._loaded = False
        self._registries: dict[str, Registry[Any]] = {}

    @property
    def plugins(self) -> dict[str, PluginInfo]:
        """Every plugin by name, loaded or broken (loads entry points on first access)."""
        self.load()
        return self._plugins

    # ------------------------------------------------------------------ loading
    def load(self) -> PluginHost:
        """Load entry-point plugins (once; later calls do nothing)."""
        if self._loaded:
            return self
        self._loaded = True
        if self._load_entry_points:
            allowed = allowed_plugins()
            for ep in _sorted_entry_points():
                if allowed is None or ep.name in allowed or ep.value.startswith(CORE_MODULES):
                    self._load_entry_point(ep)
        return self

    def _load_entry_point(self, ep: EntryPoint) -> None:
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else None
        info = PluginInfo(
            name=ep.name,
            source="built-in" if dist_name == CORE_DISTRIBUTION else "entry point",
            target=ep.value,
            distribution=dist_name,
            version=dist.version if dist is not None else None,
        )
        if ep.name in self._plugins:
            other = self._plugins[ep.name]
            if other.target == ep.value:
                return  # the same distribution seen twice on sys.path
            info.error = (
                f"plugin name {ep.name!r} is provided by both "
                f"{other.distribution or other.target!r} and {dist_name or ep.value!r}"
            )
            self._plugins[f"{ep.name} ({dist_name})"] = info
            return
        self._plugins[ep.name] = info
        try:
            plugin = ep.load()
            self._register(plugin, ep.name)
        except Exception as exc:  # one broken plugin must not break the others
            _record_failure(info, exc)

    def add(self, plugin: object, name: str | None = None, *, source: str = "object") -> PluginInfo:
        """Register an in-memory plugin (a module, class or instance with hook impls)."""
        self.load()
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if name in self._plugins:
            raise PluginLoadError(f"a plugin named {name!r} is already loaded")
        target = getattr(plugin, "__file__", None) or getattr(plugin, "__name__", repr(plugin))
        info = PluginInfo(name=name, source=source, target=str(target))
        self._plugins[name] = info
        try:
            self._register(plugin, name)
        except Exception as exc:
            _record_failure(info, exc)
        self._registries.clear()
        return info

    def _register(self, plugin: object, name: str) -> None:
        """Register ``plugin`` with pluggy and guard its hook implementations."""
        self.pm.register(plugin, name=name)
        for hook in self.pm.get_hookcallers(plugin) or []:
            self._guard(hook)

    def _guard(self, hook: pluggy.HookCaller) -> pluggy.HookCaller:
        """Put the host's guard around every implementation of ``hook`` not guarded yet.

        The guards are idempotent; implementations registered with ``host.pm.register`` behind
        the host's back get theirs on the host's next call of the hook.
        """
        for impl in hook.get_hookimpls():
            if not hasattr(impl.function, GUARD_MARK):
                # pluggy calls ``impl.function`` with ``impl.argnames``, which it computed from
                # the original function when it created the HookImpl: they stay valid.
                impl.function = guarded(  # type: ignore[misc]
                    impl.function,
                    impl.plugin_name,
                    self._plugins,
                    wrapper=bool(impl.wrapper or impl.hookwrapper),
                )
        return hook

    def add_path(self, spec: str) -> PluginInfo:
        """Load a plugin from a Python file (``my_plugin.py``) or an importable module name."""
        path = Path(spec)
        if spec.endswith(".py"):
            if not path.is_file():
                raise PluginLoadError(f"plugin file {spec!r} does not exist")
            name = path.stem
            try:
                module = _import_file(path, name)
            except Exception as exc:
                info = PluginInfo(name=name, source="file", target=str(path.resolve()))
                self._plugins[name] = _record_failure(info, exc)
                return info
            return self.add(module, name, source="file")
        try:
            module = importlib.import_module(spec)
        except Exception as exc:
            info = PluginInfo(name=spec, source="module", target=spec)
            self._plugins[spec] = _record_failure(info, exc)
            return info
        return self.add(module, spec, source="module")

    # ------------------------------------------------------------------ registries
    def registry(self, kind: str) -> Registry[Any]:
        """The registry of one kind (built on first use).

        Raises:
            DuplicateNameError: two plugins registered the same name.
        """
        if kind not in KINDS:
            raise KeyError(f"unknown registry kind {kind!r}; kinds: {', '.join(KINDS)}")
        if kind not in self._registries:
            self._registries[kind] = self._build(kind)
        return self._registries[kind]

    def _build(self, kind: str) -> Registry[Any]:
        """Call the registration hook of ``kind`` through pluggy and fill a fresh registry.

        A plugin whose implementation raises is marked broken and its entries are dropped;
        the other plugins' implementations still run. A wrapper that raises fails the whole
        call: its plugin is marked broken and the call is repeated without it.

        Raises:
            DuplicateNameError: two plugins registered the same name.
        """
        self.load()
        hook_name, noun = KINDS[kind]
        hook = self._guard(getattr(self.pm.hook, hook_name))
        while True:
            registry: Registry[Any] = Registry(noun)
            with collecting(propagate=(DuplicateNameError,)) as sink:
                try:
                    hook(register=register_into(registry))
                    culprit = None
                except DuplicateNameError:
                    raise
                except Exception as exc:
                    culprit = sink.raised_by(exc)
                    info = self._plugins.get(culprit) if culprit is not None else None
                    if info is None or not info.ok:
                        raise  # not a plugin's wrapper: nothing to isolate
                    _record_failure(info, exc, during=hook_name)
                finally:
                    for name, exc in sink.failures:
                        registry.remove_plugin(name)
                        if name in self._plugins:
                            _record_failure(self._plugins[name], exc, during=hook_name)
            if culprit is None:
                break
        for name, info in self._plugins.items():
            names = registry.by_plugin(name)
            if info.ok and names:
                info.registers[kind] = names
        broken = self.broken()
        if broken:
            registry.hint = "plugins that failed to load: " + "; ".join(
                f"{p.name}: {p.error}" for p in broken
            )
        return registry

    def build_all(self) -> None:
        """Build every registry (fills :attr:`PluginInfo.registers`)."""
        for kind in KINDS:
            self.registry(kind)

    @property
    def models(self) -> Registry[Any]:
        """The models registry (``registry("models")``)."""
        return self.registry("models")

    @property
    def heads(self) -> Registry[Any]:
        """The heads registry (``registry("heads")``)."""
        return self.registry("heads")

    @property
    def datasets(self) -> Registry[Any]:
        """The datasets registry (``registry("datasets")``)."""
        return self.registry("datasets")

    @property
    def attacks(self) -> Registry[Any]:
        """The attacks registry (``registry("attacks")``)."""
        return self.registry("attacks")

    @property
    def metrics(self) -> Registry[Any]:
        """The metrics registry (``registry("metrics")``)."""
        return self.registry("metrics")

    @property
    def reporters(self) -> Registry[Any]:
        """The reporters registry (``registry("reporters")``)."""
        return self.registry("reporters")

    @property
    def training_methods(self) -> Registry[Any]:
        """The training methods registry (``registry("training_methods")``)."""
        return self.registry("training_methods")

    # ------------------------------------------------------------------ queries
    def broken(self) -> list[PluginInfo]:
        """Plugins that failed to load or register."""
        self.load()
        return [p for p in self._plugins.values() if not p.ok]

    def require(self, name: str) -> PluginInfo:
        """The named plugin, which must have loaded; else a :class:`PluginLoadError`.

        ``name`` may also be a plugin file (``x.py``) or module path not yet loaded.
        """
        self.load()
        if name not in self._plugins and (name.endswith(".py") or "." in name):
            self.add_path(name)
            name = Path(name).stem if name.endswith(".py") else name
        if name not in self._plugins:
            raise UnknownNameError("plugin", name, [p for p in self._plugins if " " not in p])
        info = self._plugins[name]
        if not info.ok:
            raise PluginLoadError(f"plugin {name!r} failed to load: {info.error}")
        return info

    def versions(self) -> dict[str, str]:
        """``{plugin name: version}`` of every loaded plugin (for results.json)."""
        self.load()
        return {
            name: info.version or (info.source if info.source != "built-in" else "")
            for name, info in self._plugins.items()
            if info.ok
        }

    def call(self, hook_name: str, **kwargs: Any) -> list[str]:
        """Call a hook through pluggy; return error lines instead of raising.

        Each implementation gets the keyword arguments it declares. A plugin whose
        implementation raises gets an error line and the others still run; plugins marked
        broken are skipped. A wrapper that raises fails the call (implementations it had not
        reached yet do not run), reported as its plugin's error.

        Args:
            hook_name: the hook, e.g. ``"featrob_run_end"``.
            **kwargs: the hook's arguments.

        Returns:
            ``"plugin 'NAME' failed in HOOK: Error: message"`` lines, in call order.
        """
        self.load()
        hook = self._guard(getattr(self.pm.hook, hook_name))
        with collecting() as sink:
            try:
                hook(**kwargs)
                raised = None
            except Exception as exc:
                raised = exc
        failures: list[tuple[str | None, BaseException]] = [*sink.failures]
        if raised is not None:
            failures.append((sink.raised_by(raised), raised))
        return [
            f"plugin {name!r} failed in {hook_name}: {_one_line(exc)}"
            if name is not None
            else f"{hook_name} failed: {_one_line(exc)}"
            for name, exc in failures
        ]


_default_host: PluginHost | None = None


def get_plugin_host() -> PluginHost:
    """The process-wide host with entry-point plugins (loaded on first call)."""
    global _default_host
    if _default_host is None:
        _default_host = PluginHost()
    return _default_host.load()


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide pluggy manager with every installed plugin loaded (once)."""
    return get_plugin_host().pm


# ---------------------------------------------------------------------- helpers
def _sorted_entry_points() -> list[EntryPoint]:
    eps = list(entry_points(group=ENTRY_POINT_GROUP))

    def key(ep: EntryPoint) -> tuple[int, str]:
        dist = getattr(ep, "dist", None)
        is_core = dist is not None and dist.metadata["Name"] == CORE_DISTRIBUTION
        return (0 if is_core else 1, ep.name)

    return sorted(eps, key=key)


def _import_file(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"featrob_file_plugin_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _record_failure(info: PluginInfo, exc: BaseException, during: str = "") -> PluginInfo:
    info.error = _one_line(exc) + (f" (in {during})" if during else "")
    info.traceback = "".join(traceback.format_exception(exc))
    return info
