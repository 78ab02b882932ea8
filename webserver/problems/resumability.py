"""Whether a coordinator restart resumes an app, read from its source and never run.

The coordinator resumes a run by watching Flower's `Strategy.start`
(coordinator/resume.py): the first `start` of a restarted ServerApp is given the
last checkpoint as `initial_arrays`, the rounds left, round numbers that
continue and the server-optimiser state of Flower's FedOpt family and FedAvgM.
Nothing else is restored. So an app resumes when its `@app.main()` calls
`start` on one of Flower's Message-API strategies; it starts again at round 1
when it uses the compatibility API, drives the Grid itself, or defines its own
`start`. Between the two, where a restart resumes the model but not state the
app or strategy keeps between rounds, or where this reading cannot tell, the
answer is "unknown" with the reason: the page must never promise more than the
coordinator does.

Uploaded code is never imported here: the FAB's Python files are parsed with
`ast` and only the modules the ServerApp's module imports from the FAB are read.
"""

from __future__ import annotations

import ast
import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from fedota_common.fab import UNPACK_ERRORS

# Flower's Message-API strategies (flwr.serverapp.strategy, flwr 1.41) whose state
# between rounds is the model (given back as `initial_arrays`) or is restored
# with the checkpoint (m_t, v_t, momentum_vector); tests/unit/test_resumability.py
# checks the two sets cover the module.
RESTORED = frozenset(
    {
        "Bulyan",
        "FedAdagrad",
        "FedAdam",
        "FedAvg",
        "FedAvgM",
        "FedMedian",
        "FedProx",
        "FedTrimmedAvg",
        "FedXgbBagging",
        "FedYogi",
        "Krum",
        "MultiKrum",
        "QFedAvg",
    }
)
# Flower's strategies that keep state a restart does not restore, and what it is.
_ACCOUNTING = "the privacy its accountant counts as spent starts again from zero, so max_epsilon bounds each attempt"
_CLIPPING = "its clipping norm starts again from initial_clipping_norm"
NOT_RESTORED = {
    "DifferentialPrivacyClientSideAdaptiveClipping": _CLIPPING,
    "DifferentialPrivacyClientSideFixedClipping": _ACCOUNTING,
    "DifferentialPrivacyServerSideAdaptiveClipping": _CLIPPING,
    "DifferentialPrivacyServerSideFixedClipping": _ACCOUNTING,
    "FedXgbCyclic": "the order in which it visits the nodes starts afresh",
}
# Wrappers: the coordinator saves and restores the state of the strategy `start` runs on, not the wrapped one's.
_WRAPPERS = frozenset(n for n in NOT_RESTORED if n.startswith("DifferentialPrivacy"))
# Not strategies, or not one a run can use as it is.
_NOT_A_STRATEGY = frozenset({"Result", "Strategy"})
_SERVER_OPTIMISERS = frozenset({"FedAdagrad", "FedAdam", "FedAvgM", "FedYogi"})
_STRATEGY_MODULE = "flwr.serverapp.strategy"
# The compatibility API's ServerApp arguments.
_COMPAT_ARGUMENTS = ("server_fn", "config", "strategy", "client_manager")
# What runs the compatibility API's rounds inside a Message-API ServerApp.
_COMPAT_NAMES = frozenset({"LegacyContext", "DefaultWorkflow", "SecAggPlusWorkflow", "SecAggWorkflow"})
_GRID_METHODS = ("send_and_receive", "push_messages", "pull_messages")
# The methods of Flower's Strategy: a class defining one of them is taken for a strategy.
_STRATEGY_METHODS = frozenset(
    {"start", "configure_train", "aggregate_train", "configure_evaluate", "aggregate_evaluate", "summary"}
)
# Methods that change the object they are called on (a strategy keeping state in a list or dict).
_MUTATORS = frozenset(
    {"append", "extend", "insert", "add", "update", "setdefault", "pop", "popitem", "remove", "discard", "clear"}
)
# Marks a base class the reading cannot name.
_UNNAMED = "?"
# The most Python source read for one app, all modules together: the built-in apps' ServerApp
# code is 30 KB; parsing takes time and memory (4 MB: 8 s and 800 MB here), on a page view.
MAX_SOURCE_BYTES = 256 << 10
DOCS = "docs/architecture.md, “Which apps resume after a restart”"


@dataclass(frozen=True)
class Resumability:
    """How a coordinator restart treats an app: resumes (True), round 1 again (False), or unknown (None)."""

    resumes: bool | None
    reason: str

    @property
    def sentence(self) -> str:
        """What the problem page says, before any run starts."""
        if self.resumes is True:
            return f"If the coordinator restarts, this app resumes from its last checkpoint ({self.reason})."
        if self.resumes is False:
            return f"If the coordinator restarts, this app starts again at round 1 as a new attempt: {self.reason}."
        return f"Fedota cannot tell whether this app resumes if the coordinator restarts: {self.reason}."


class _Unknown(Exception):
    """The source cannot be read far enough to decide; the message says why."""


def analyse_fab(content: bytes, serverapp: str) -> Resumability:
    """How a coordinator restart treats the app in FAB `content` whose ServerApp is `serverapp` ("module:attr")."""
    try:
        return _analyse(_Sources(content), serverapp)
    except _Unknown as exc:
        return Resumability(None, str(exc))
    except (*UNPACK_ERRORS, KeyError, OSError, ValueError, RecursionError, MemoryError) as exc:
        return Resumability(None, f"the app's files cannot be read ({type(exc).__name__})")


class _Sources:
    """The FAB's Python modules by dotted name, parsed on demand."""

    def __init__(self, content: bytes) -> None:
        self._zip = zipfile.ZipFile(io.BytesIO(content))
        self._paths: dict[str, str] = {}
        for info in self._zip.infolist():
            path = PurePosixPath(info.filename)
            if info.is_dir() or path.suffix != ".py":
                continue
            parts = list(path.with_suffix("").parts)
            if parts and parts[-1] == "__init__":
                parts.pop()
            if parts and all(p.isidentifier() for p in parts):
                self._paths[".".join(parts)] = info.filename
        self._parsed: dict[str, _Module] = {}
        self._left = MAX_SOURCE_BYTES

    def has(self, name: str) -> bool:
        return name in self._paths

    def is_package(self, name: str) -> bool:
        return self._paths.get(name, "").endswith("__init__.py")

    def module(self, name: str) -> _Module:
        if name not in self._parsed:
            path = self._paths[name]
            info = self._zip.getinfo(path)
            self._left -= info.file_size
            if self._left < 0:
                raise _Unknown(
                    f"the ServerApp's modules are more than {MAX_SOURCE_BYTES >> 10} KiB of source (with {path}), "
                    "more than Fedota reads to decide"
                )
            source = self._zip.read(info)
            try:
                tree = ast.parse(source, filename=path)
            except SyntaxError as exc:
                raise _Unknown(f"{path} cannot be parsed (line {exc.lineno}: {exc.msg})") from None
            except (ValueError, RecursionError, MemoryError) as exc:
                raise _Unknown(f"{path} cannot be parsed ({type(exc).__name__})") from None
            self._parsed[name] = _Module(name, path, tree, self.is_package(name))
        return self._parsed[name]


class _Module:
    """One parsed module: its imports as local name -> dotted name, and its top-level definitions."""

    def __init__(self, name: str, path: str, tree: ast.Module, is_package: bool) -> None:
        self.name, self.path, self.tree = name, path, tree
        self.package = name if is_package else name.rpartition(".")[0]
        self.imports: dict[str, str] = {}
        self.defined: set[str] = set()
        self.parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        self.imports[alias.asname] = alias.name
                    else:
                        top = alias.name.partition(".")[0]
                        self.imports[top] = top
            elif isinstance(node, ast.ImportFrom):
                base = self._absolute(node)
                for alias in node.names:
                    if alias.name != "*":
                        self.imports[alias.asname or alias.name] = f"{base}.{alias.name}" if base else alias.name
        for stmt in tree.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.defined.add(stmt.name)
            elif isinstance(stmt, ast.Assign):
                self.defined.update(t.id for t in stmt.targets if isinstance(t, ast.Name))
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                self.defined.add(stmt.target.id)

    def _absolute(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        parts = self.package.split(".") if self.package else []
        parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
        return ".".join([*parts, node.module] if node.module else parts)

    def dotted(self, expr: ast.expr) -> str | None:
        """`expr` (a name or attribute chain) as the dotted name it refers to, if it does."""
        if isinstance(expr, ast.Name):
            if expr.id in self.imports:
                return self.imports[expr.id]
            if expr.id in self.defined:
                return f"{self.name}.{expr.id}"
            return None
        if isinstance(expr, ast.Attribute):
            base = self.dotted(expr.value)
            return f"{base}.{expr.attr}" if base else None
        return None

    def in_loop(self, node: ast.AST) -> bool:
        """Whether `node` runs in a loop of its own function (or of the module)."""
        at = self.parents.get(node)
        while at is not None and not isinstance(at, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            if isinstance(at, (ast.For, ast.AsyncFor, ast.While, ast.comprehension)):
                return True
            at = self.parents.get(at)
        return False


@dataclass
class _StrategyClass:
    """A class the app defines (`class X(FedAvg)` or `type(name, (cls,), {...})`)."""

    name: str
    where: str
    bases: list[str]
    overrides: list[str]
    # Methods (other than __init__) that change the object or module globals.
    keeps_state: list[str]
    # Its own start(): "" none, "delegates" (it calls a start() within, as super().start(...)), "own".
    start: str
    # Its start() takes a `grid` (how a class not derived from Flower's is taken for a strategy).
    start_takes_grid: bool
    # Made by a call, or in a function: used wherever the code around it runs.
    made_at_run_time: bool

    @property
    def looks_like_a_strategy(self) -> bool:
        """Derived from a class this reading cannot name (`type(n, (cls,), ...)`) and defining a strategy method."""
        return any(b.startswith(_UNNAMED) for b in self.bases) and bool(_STRATEGY_METHODS & set(self.overrides))


@dataclass
class _Facts:
    starts: list[tuple[str, bool, bool]] = field(default_factory=list)  # where, in a loop, evaluate_fn given
    grid_calls: set[str] = field(default_factory=set)
    compat: set[str] = field(default_factory=set)
    flower: set[str] = field(default_factory=set)
    by_name: list[str] = field(default_factory=list)  # where getattr(flwr.serverapp.strategy, ...) picks one
    classes: dict[str, _StrategyClass] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)  # dotted names referenced anywhere


def _analyse(sources: _Sources, serverapp: str) -> Resumability:
    module_name, _, attr = serverapp.partition(":")
    if not module_name or not attr.isidentifier():
        raise _Unknown(f"the app's serverapp {serverapp!r} is not of the form module:attribute")
    module, made_as, call = _server_app(sources, module_name, attr)
    compat = [kw.arg for kw in call.keywords if kw.arg in _COMPAT_ARGUMENTS]
    if call.args or compat:
        shown = ", ".join(f"{k}=..." for k in compat) or "..."
        return Resumability(
            False,
            f"it uses the compatibility API (ServerApp({shown})), which Fedota cannot resume. See {DOCS}",
        )
    modules = [sources.module(name) for name in _reachable(sources, module_name)]
    if not any(_is_main(m, f"{module.name}.{made_as}") for m in modules):
        raise _Unknown(
            f"{module.path} makes {made_as} = ServerApp() but no function Fedota can see is decorated @{made_as}.main()"
        )
    facts = _Facts()
    for each in modules:
        _collect(each, facts)
    return _decide(facts)


def _server_app(sources: _Sources, module_name: str, attr: str) -> tuple[_Module, str, ast.Call]:
    """The module that makes the ServerApp `attr`, its name there and the `ServerApp(...)` call (through re-exports)."""
    seen: set[str] = set()
    while True:
        if not sources.has(module_name):
            path = module_name.replace(".", "/")
            raise _Unknown(f"the serverapp module {module_name} is not in the app (no {path}.py)")
        if module_name in seen:
            raise _Unknown(f"{attr} is imported in a circle starting from {module_name}")
        seen.add(module_name)
        module = sources.module(module_name)
        value: ast.expr | None = None
        for stmt in module.tree.body:
            if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == attr for t in stmt.targets):
                value = stmt.value
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id == attr:
                value = stmt.value
        if isinstance(value, ast.Call) and (module.dotted(value.func) or "").endswith(".ServerApp"):
            return module, attr, value
        if value is None and attr in module.imports:
            target_module, _, target_attr = module.imports[attr].rpartition(".")
            if sources.has(target_module):
                module_name, attr = target_module, target_attr
                continue
        raise _Unknown(f"{module.path} does not make {attr} by calling Flower's ServerApp(...) where Fedota can see it")


def _is_main(module: _Module, server_app: str) -> bool:
    """Whether `module` has a function decorated `@<server_app>.main()` (`server_app`: its dotted name)."""
    for node in ast.walk(module.tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for deco in node.decorator_list:
            target = deco.func if isinstance(deco, ast.Call) else deco
            if (
                isinstance(target, ast.Attribute)
                and target.attr == "main"
                and module.dotted(target.value) == server_app
            ):
                return True
    return False


def _reachable(sources: _Sources, start: str) -> list[str]:
    """`start` and every module of the app it imports, directly or not (packages' __init__ too)."""
    order: list[str] = []
    todo = [start]
    while todo:
        name = todo.pop()
        if name in order or not sources.has(name):
            continue
        order.append(name)
        module = sources.module(name)
        candidates = [*module.imports.values(), module.package]
        for dotted in candidates:
            parts = dotted.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if sources.has(prefix) and prefix not in order:
                    todo.append(prefix)
    return order


def _annotations(tree: ast.AST) -> set[int]:
    """Ids of the nodes inside type annotations (naming a class there does not use it)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        roots: list[ast.expr | None] = []
        if isinstance(node, ast.arg):
            roots.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            roots.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            roots.append(node.annotation)
        for root in roots:
            if root is not None:
                inside.update(id(n) for n in ast.walk(root))
    return inside


def _collect(module: _Module, facts: _Facts) -> None:
    skip = _annotations(module.tree)
    for node in ast.walk(module.tree):
        if id(node) in skip:
            continue
        if isinstance(node, (ast.Name, ast.Attribute)) and isinstance(node.ctx, ast.Load):
            _reference(module, node, facts)
        elif isinstance(node, ast.Call):
            _call(module, node, facts)
        elif isinstance(node, ast.ClassDef):
            _class(module, node, facts)


def _flower_strategy(dotted: str | None) -> str | None:
    """The Flower strategy class `dotted` names (from the package or one of its modules), if any."""
    if not dotted or not dotted.startswith(_STRATEGY_MODULE + "."):
        return None
    name = dotted.rpartition(".")[2]
    return name if name in RESTORED or name in NOT_RESTORED or name in _NOT_A_STRATEGY else None


def _reference(module: _Module, node: ast.Name | ast.Attribute, facts: _Facts) -> None:
    if isinstance(node, ast.Name):
        # A class defined in a function is referenced by a name the module does not define.
        facts.used.add(f"{module.name}.{node.id}")
    dotted = module.dotted(node)
    if dotted is None:
        return
    facts.used.add(dotted)
    flower = _flower_strategy(dotted)
    if flower is not None and flower not in _NOT_A_STRATEGY:
        facts.flower.add(flower)
    elif dotted.startswith("flwr.server.") and dotted.rpartition(".")[2] in _COMPAT_NAMES:
        facts.compat.add(dotted.rpartition(".")[2])


def _where(module: _Module, node: ast.AST) -> str:
    return f"{module.path}:{getattr(node, 'lineno', '?')}"


def _call(module: _Module, node: ast.Call, facts: _Facts) -> None:
    func = node.func
    keywords = {kw.arg for kw in node.keywords}
    if isinstance(func, ast.Attribute):
        if func.attr == "start" and ("grid" in keywords or "initial_arrays" in keywords or len(node.args) >= 2):
            facts.starts.append((_where(module, node), module.in_loop(node), "evaluate_fn" in keywords))
        elif func.attr in _GRID_METHODS:
            facts.grid_calls.add(func.attr)
    elif isinstance(func, ast.Name) and func.id == "getattr" and node.args:
        if module.dotted(node.args[0]) == _STRATEGY_MODULE:
            facts.by_name.append(_where(module, node))
    elif isinstance(func, ast.Name) and func.id == "type" and len(node.args) == 3:
        _dynamic_class(module, node, facts)


def _dynamic_class(module: _Module, node: ast.Call, facts: _Facts) -> None:
    """`type(name, (base,), {"aggregate_train": fn, ...})`: a strategy subclass made at run time."""
    bases_arg, body = node.args[1], node.args[2]
    if not isinstance(body, ast.Dict):
        return
    bases = [module.dotted(b) or _UNNAMED + ast.unparse(b) for b in getattr(bases_arg, "elts", [])]
    functions = _functions_in_scope(module, node)
    overrides, keeps = [], []
    start, takes_grid = "", False
    for key, value in zip(body.keys, body.values, strict=True):
        if not isinstance(key, ast.Constant) or not isinstance(key.value, str):
            continue
        overrides.append(key.value)
        fn = functions.get(value.id) if isinstance(value, ast.Name) else value
        if key.value == "start":
            # A start() this reading cannot see is taken for one of the app's own.
            start = _start_kind(fn) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) else "own"
            takes_grid = True
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and key.value != "__init__":
            if _changes_state(fn):
                keeps.append(key.value)
    where = _where(module, node)
    facts.classes[where] = _StrategyClass(
        name=f"the class made with type() at {where}",
        where=where,
        bases=bases,
        overrides=overrides,
        keeps_state=keeps,
        start=start,
        start_takes_grid=takes_grid,
        made_at_run_time=True,
    )


def _functions_in_scope(module: _Module, node: ast.AST) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    """The functions defined in the function around `node`, and the module's own."""
    scope: ast.AST = module.tree
    at = module.parents.get(node)
    while at is not None:
        if isinstance(at, (ast.FunctionDef, ast.AsyncFunctionDef)):
            scope = at
            break
        at = module.parents.get(at)
    found: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    for body in (module.tree.body, getattr(scope, "body", [])):
        for stmt in body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found[stmt.name] = stmt
    return found


def _class(module: _Module, node: ast.ClassDef, facts: _Facts) -> None:
    methods = [s for s in node.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))]
    names = [m.name for m in methods]
    keeps = [m.name for m in methods if m.name != "__init__" and _changes_state(m)]
    start = next((m for m in methods if m.name == "start"), None)
    nested = any(isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef)) for p in _ancestors(module, node))
    facts.classes[f"{module.name}.{node.name}"] = _StrategyClass(
        name=node.name,
        where=_where(module, node),
        bases=[module.dotted(b) or _UNNAMED + ast.unparse(b) for b in node.bases],
        overrides=names,
        keeps_state=keeps,
        start=_start_kind(start) if start is not None else "",
        start_takes_grid=start is not None and any(a.arg == "grid" for a in [*start.args.args, *start.args.kwonlyargs]),
        made_at_run_time=nested,
    )


def _start_kind(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """ "delegates" when `fn` calls a start() (`super().start(...)`: Flower's, which the coordinator watches), else "own"."""
    for node in ast.walk(fn):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "start":
            return "delegates"
    return "own"


def _ancestors(module: _Module, node: ast.AST) -> Iterator[ast.AST]:
    at = module.parents.get(node)
    while at is not None:
        yield at
        at = module.parents.get(at)


def _changes_state(fn: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> bool:
    """Whether `fn` changes its first argument's attributes (`self.x = ...`, `self.x.append(...)`) or globals."""
    args = fn.args.posonlyargs + fn.args.args
    if not args:
        return False
    me = args[0].arg
    for node in ast.walk(fn):
        if isinstance(node, (ast.Global, ast.Nonlocal)):
            return True
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in _MUTATORS and _rooted_at(func.value, me, deep=True):
                return True
            if isinstance(func, ast.Name) and func.id in ("setattr", "delattr") and node.args:
                if _rooted_at(node.args[0], me, deep=False):
                    return True
        if any(_rooted_at(t, me, deep=True) and not isinstance(t, ast.Name) for t in _flatten(targets)):
            return True
    return False


def _flatten(targets: list[ast.expr]) -> Iterator[ast.expr]:
    for target in targets:
        if isinstance(target, (ast.Tuple, ast.List)):
            yield from _flatten(list(target.elts))
        elif isinstance(target, ast.Starred):
            yield from _flatten([target.value])
        else:
            yield target


def _rooted_at(expr: ast.expr, name: str, *, deep: bool) -> bool:
    """Whether `expr` is `name` or (with `deep`) an attribute or item of it, at any depth."""
    while deep and isinstance(expr, (ast.Attribute, ast.Subscript)):
        expr = expr.value
    return isinstance(expr, ast.Name) and expr.id == name


def _lineage(facts: _Facts, key: str, seen: frozenset[str] = frozenset()) -> tuple[set[str], list[_StrategyClass]]:
    """The Flower classes the app's class `key` derives from, and the app's classes on the way (itself first)."""
    cls = facts.classes[key]
    roots: set[str] = set()
    chain = [cls]
    for base in cls.bases:
        flower = _flower_strategy(base)
        if flower is not None:
            roots.add(flower)
        elif base in facts.classes and base not in seen:
            more_roots, more_chain = _lineage(facts, base, seen | {key})
            roots |= more_roots
            chain += more_chain
    return roots, chain


@dataclass(frozen=True)
class _Used:
    """A strategy class of the app that the code uses, with what it derives from."""

    cls: _StrategyClass
    roots: frozenset[str]
    chain: tuple[_StrategyClass, ...]


def _used_strategies(facts: _Facts) -> list[_Used]:
    """The app's strategy classes in use: derived from Flower's, or (base unknown) defining a strategy method."""
    used = []
    for key, cls in facts.classes.items():
        roots, chain = _lineage(facts, key)
        if not roots and not any(c.looks_like_a_strategy for c in chain):
            continue
        if cls.made_at_run_time or key in facts.used:
            used.append(_Used(cls, frozenset(roots), tuple(chain)))
    return used


def _decide(facts: _Facts) -> Resumability:
    strategies = _used_strategies(facts)
    grid = ", ".join(f"grid.{m}" for m in sorted(facts.grid_calls))
    compat = ", ".join(sorted(facts.compat))
    if not facts.starts:
        if facts.compat:
            return Resumability(
                False,
                f"its @app.main() runs the compatibility API ({compat}), which Fedota cannot resume. See {DOCS}",
            )
        if facts.grid_calls:
            return Resumability(
                False,
                f"it drives the Grid itself ({grid}) instead of running a Flower strategy's start(), and Fedota "
                f"resumes only through Strategy.start. See {DOCS}",
            )
        return Resumability(
            None,
            "its code calls no strategy's start(grid=..., ...) and does not use the Grid itself that Fedota can see",
        )
    # A strategy's start() that never calls Flower's is one the coordinator does not watch; so is the
    # start(grid, ...) of a class that is not derived from Flower's at all.
    own = {c.name for u in strategies for c in u.chain if c.start == "own"}
    own |= {c.name for c in facts.classes.values() if c.start == "own" and c.start_takes_grid}
    if own:
        return Resumability(
            False,
            f"{', '.join(sorted(own))} defines its own start(), and Fedota resumes only through Flower's "
            f"Strategy.start. See {DOCS}",
        )
    if facts.compat:
        return Resumability(
            None,
            f"it runs a strategy's start() but also the compatibility API ({compat}): what start() runs "
            "resumes from the checkpoint, what the compatibility API runs starts again at round 1",
        )
    if facts.grid_calls:
        return Resumability(
            None,
            f"it runs a strategy's start() but also sends messages itself ({grid}): the strategy's rounds resume "
            "from the checkpoint, what the app sends itself is sent again from the beginning",
        )
    if len(facts.starts) > 1 or any(loop for _, loop, _ in facts.starts):
        shown = ", ".join(where for where, _, _ in facts.starts)
        return Resumability(
            None,
            f"it calls start() more than once ({shown}{', in a loop' if len(facts.starts) == 1 else ''}): only the "
            "first call picks up the checkpoint, later ones start from their own initial arrays",
        )
    if facts.by_name:
        return Resumability(
            None,
            f"it picks a Flower strategy by name at run time ({', '.join(facts.by_name)}), and whether a restart "
            "restores all of a strategy's state depends on which one it is",
        )
    for u in strategies:
        if "Strategy" in u.roots and not u.roots & (RESTORED | set(NOT_RESTORED)):
            return Resumability(
                None,
                f"its strategy {u.cls.name} is its own (a subclass of Flower's abstract Strategy): a restart resumes "
                f"the model and the round numbers through Strategy.start, but not what {u.cls.name} keeps between "
                "rounds",
            )
    for u in strategies:
        methods = sorted({m for c in u.chain for m in c.keeps_state})
        if methods:
            return Resumability(
                None,
                f"its strategy {u.cls.name} keeps state of its own between rounds (it changes itself in "
                f"{', '.join(methods)}): a restart resumes the model and the round numbers from the checkpoint, "
                "but not that state",
            )
    names = (facts.flower | {r for u in strategies for r in u.roots}) - _NOT_A_STRATEGY
    partial = sorted(names & set(NOT_RESTORED))
    if partial:
        lost = {NOT_RESTORED[name]: [n for n in partial if NOT_RESTORED[n] == NOT_RESTORED[name]] for name in partial}
        what = [f"{', '.join(who)}: {text}" for text, who in lost.items()]
        wrapped = sorted(names & _SERVER_OPTIMISERS)
        if wrapped and names & _WRAPPERS:
            what.append(f"a wrapped {' or '.join(wrapped)} loses its server-optimiser state")
        return Resumability(
            None,
            "a restart resumes the model and the round numbers from the checkpoint, but not all of the "
            f"strategy's state ({'; '.join(what)})",
        )
    if not names:
        return Resumability(
            None, "it calls start() on a strategy that is not one of Flower's (flwr.serverapp.strategy)"
        )
    return Resumability(True, _resumes_reason(sorted(names), strategies, facts))


def _resumes_reason(names: list[str], strategies: list[_Used], facts: _Facts) -> str:
    which = names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" or {names[-1]}"
    text = f"Flower's {which} via Strategy.start"
    if _SERVER_OPTIMISERS & set(names):
        text += ", with the server-optimiser state"
    overridden = sorted({m for u in strategies for c in u.chain for m in c.overrides if m != "__init__"})
    if overridden:
        named = sorted({u.cls.name for u in strategies if not u.cls.made_at_run_time})
        if len(named) == 1:
            text += f"; the app's {named[0]} overrides {', '.join(overridden)} and keeps no state of its own"
        else:
            who = f"the app's {', '.join(named)}" if named else "the app's subclasses"
            text += f"; {who} override {', '.join(overridden)} and keep no state of their own"
    if any(evaluate for _, _, evaluate in facts.starts):
        text += "; its evaluate_fn counts rounds from 1 again after a restart"
    return text
