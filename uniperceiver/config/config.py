"""Config nodes: safe YAML with ``_BASE_`` inheritance, task nodes merged by NAME, typed CLI overrides.

Precedence, lowest first: defaults < YAML global < YAML task < CLI global (applies to every task) < CLI task
(``TASKS.<NAME>.<KEY> VALUE``).  Every user mistake raises :class:`ConfigError` whose message names the file,
key or value at fault; ``main.py`` prints it as one line and exits with code 2.
"""
from __future__ import annotations

import ast
import copy
import difflib
import os
import re
from typing import Any, Dict, Iterable, List, Optional

import yaml
from yacs.config import CfgNode as _YacsCfgNode

from uniperceiver.utils.errors import ConfigError

# The sub-trees a task node holds (each task inherits every global key of these it does not set).
TASK_SUBTREES = ("DATASETS", "DATALOADER", "MODEL", "LOSSES", "INFERENCE", "DECODE_STRATEGY")

BASE_KEY = "_BASE_"
_FRACTION = re.compile(r"^\s*([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*$")
# A decimal number as text: "1e-3", "-2.5E+4", ".5" (YAML 1.1 reads "1e-3" as a string; yacs as a float).
_FLOAT_TEXT = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")
# The one non-plain tag of the published configs: ``!!python/object/apply:eval ["160/224"]``.
EVAL_TAG = "tag:yaml.org,2002:python/object/apply:eval"
_ARITH_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
              ast.Div: lambda a, b: a / b}


def arithmetic(text: str) -> float:
    """The value of ``text``, an arithmetic expression of numbers only (``+ - * /`` and parentheses), computed
    over its syntax tree; nothing is evaluated.  ValueError for anything else (names, calls, other operators)."""
    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            v = value(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH_OPS:
            return _ARITH_OPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"only numbers, + - * / and parentheses are allowed, not {ast.unparse(node)!r}")

    if not isinstance(text, str) or len(text) > 200:
        raise ValueError(f"expected a short arithmetic string, got {text!r}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"{text!r} is not an arithmetic expression") from None
    try:
        return float(value(tree.body))
    except ZeroDivisionError:
        raise ValueError(f"{text!r} divides by zero") from None


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` plus the published fraction tag, read as :func:`arithmetic` (never eval'ed).  Any
    other non-plain tag is refused by SafeLoader with its line."""


def _construct_eval(loader: ConfigLoader, node) -> float:
    args = loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else [loader.construct_scalar(node)]
    if len(args) != 1:
        raise yaml.constructor.ConstructorError(None, None, f"{node.tag} takes one string, got {args!r}",
                                                node.start_mark)
    try:
        return arithmetic(args[0])
    except ValueError as e:
        raise yaml.constructor.ConstructorError(None, None, f"{node.tag}: {e}", node.start_mark) from None


ConfigLoader.add_constructor(EVAL_TAG, _construct_eval)


def load_yaml_file(filename: str) -> Any:
    """One YAML file, safely (:class:`ConfigLoader`); a malformed file or a refused tag is a ConfigError with
    the file and line."""
    try:
        with open(filename) as f:
            return yaml.load(f, Loader=ConfigLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)  # one line: where and what (str(e) spans several)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = getattr(e, "problem", None) or " ".join(str(e).split())
        if isinstance(e, yaml.constructor.ConstructorError) and "could not determine a constructor" in what:
            what = f"{what}; refused: a YAML tag other than the published {EVAL_TAG.split(':', 2)[2]} fraction"
        raise ConfigError(f"{filename}: invalid YAML: {where}{what}") from None


def read_config_mapping(filename: str, stack: List[str]) -> Dict[str, Any]:
    """The top-level mapping of config file ``filename`` (absolute), included through ``stack`` (the files that
    include it, outermost first); ConfigError for a ``_BASE_`` cycle, a missing file or a non-mapping."""
    if filename in stack:
        raise ConfigError(f"_BASE_ cycle in config files: {' -> '.join(list(stack) + [filename])}")
    if not os.path.isfile(filename):
        where = f" (included from {stack[-1]})" if stack else ""
        raise ConfigError(f"config file not found: {filename}{where}")
    data = load_yaml_file(filename) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{filename}: the top level must be a mapping of config keys")
    return data


def _closest(key: str, candidates: Iterable[str]) -> str:
    names = difflib.get_close_matches(key, list(candidates), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(names)}?" if names else ""


def _parse_scalar(text: str) -> Any:
    """A CLI token to a Python value, safely: literals through ``ast.literal_eval``, else the string."""
    if not isinstance(text, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered in ("none", "null", "~"):
            return None
        return text


def _coerce(value: Any, default: Any, full_key: str) -> Any:
    """Return ``value`` converted to the type of ``default``, or raise ConfigError naming the key."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_TEXT.match(value):
            return float(value)
        if isinstance(value, str):
            match = _FRACTION.match(value)
            if match:
                try:
                    return float(match.group(1)) / float(match.group(2))
                except (ValueError, ZeroDivisionError):
                    pass
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            if default and all(isinstance(d, float) for d in default):  # e.g. BETAS [0.9, 1e-3]
                value = [_coerce(v, default[0], full_key) for v in value]
            return type(default)(value)
        if isinstance(value, str) and isinstance(default, list) and all(isinstance(d, str) for d in default):
            return [value]  # a single string where a list of strings is expected
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, dict):
        if isinstance(value, dict):
            return value
    raise ConfigError(
        f"config key {full_key}: value {value!r} ({type(value).__name__}) does not match the expected type "
        f"{type(default).__name__} (default {default!r})"
    )


class CfgNode(_YacsCfgNode):
    """yacs CfgNode with safe ``_BASE_`` loading, task-node expansion and errors that name the culprit."""

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def load_yaml_with_base(cls, filename: str, _stack: Optional[List[str]] = None) -> Dict[str, Any]:
        """Load ``filename`` with ``yaml.safe_load``, following ``_BASE_`` (a path or a list of paths,
        relative to the including file).  Task nodes (``TASKS``) and label sets (``SHARED_TARGETS``) of a
        child are merged into the parent's entry of the same NAME key by key; new names are appended."""
        filename = os.path.abspath(filename)
        stack = list(_stack or [])
        data = read_config_mapping(filename, stack)
        _check_unique_names(data, filename)
        bases = data.pop(BASE_KEY, None)
        if bases is None:
            return data
        if isinstance(bases, str):
            bases = [bases]
        merged: Dict[str, Any] = {}
        for base in bases:
            if not os.path.isabs(base):
                base = os.path.join(os.path.dirname(filename), base)
            merge_dicts(merged, cls.load_yaml_with_base(base, stack + [filename]))
        merge_dicts(merged, data)
        return merged

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        if allow_unsafe:
            raise ConfigError("unsafe YAML loading is not supported")
        data = self.load_yaml_with_base(cfg_filename)
        self.merge_from_dict(data, source=os.path.abspath(cfg_filename))

    def merge_from_dict(self, data: Dict[str, Any], source: str = "<dict>") -> None:
        """Merge a plain (already ``_BASE_``-resolved) dict, type-checked against this tree."""
        data = dict(data)
        if "VERSION" in data and data["VERSION"] != self.get("VERSION", data["VERSION"]):
            raise ConfigError(f"{source}: VERSION {data['VERSION']!r}: this code reads config files of VERSION "
                              f"{self.VERSION}")
        for list_key in ("TASKS", "SHARED_TARGETS"):
            if list_key in data:
                entries = data.pop(list_key) or []
                if not isinstance(entries, list):
                    raise ConfigError(f"{source}: {list_key} must be a list of nodes with a NAME")
                current = [dict(_to_dict(e)) for e in self[list_key]]
                merged = merge_named_lists(current, entries, f"{source}: {list_key}")
                self._set_named_list(list_key, merged, source)
        _merge_into(self, data, prefix="", source=source)

    def _set_named_list(self, key: str, entries: List[dict], source: str) -> None:
        nodes = []
        for entry in entries:
            if key == "TASKS":
                _validate_task(entry, _task_template(self), source)
            nodes.append(CfgNode(entry))
        frozen = self.is_frozen()
        self.defrost()
        self[key] = nodes
        if frozen:
            self.freeze()

    # ------------------------------------------------------------------------------------------- overrides
    def merge_from_list(self, cfg_list: List[str]) -> None:
        """Apply ``KEY VALUE`` pairs.  ``TASKS.<NAME>.<KEY>`` reaches one task; a global key of a task
        sub-tree (e.g. ``DATALOADER.TRAIN_BATCH_SIZE``) applies to every task, beating task YAML."""
        if len(cfg_list) % 2 != 0:
            raise ConfigError(
                f"command-line overrides must be KEY VALUE pairs; got an odd number of tokens: {cfg_list}"
            )
        cli_global = self.__dict__.setdefault("_cli_global", {})
        cli_task = self.__dict__.setdefault("_cli_task", {})
        for full_key, raw in zip(cfg_list[0::2], cfg_list[1::2]):
            value = _parse_scalar(raw)
            if full_key.startswith("TASKS."):
                parts = full_key.split(".")
                names = [t.NAME for t in self.TASKS]
                if len(parts) < 3 or parts[1] not in names:
                    raise ConfigError(
                        f"override {full_key}: no task named {parts[1] if len(parts) > 1 else ''!r} "
                        f"(tasks: {', '.join(names) or 'none'}){_closest(parts[1] if len(parts) > 1 else '', names)}"
                    )
                sub_key = ".".join(parts[2:])
                default = _lookup(_task_template(self), sub_key, full_key)
                cli_task.setdefault(parts[1], {})[sub_key] = _coerce(value, default, full_key)
            else:
                default = _lookup(self, full_key, full_key)
                if isinstance(default, CfgNode):
                    raise ConfigError(f"override {full_key}: names a sub-tree, not a key")
                value = _coerce(value, default, full_key)
                _assign(self, full_key, value)
                cli_global[full_key] = value

    # ---------------------------------------------------------------------------------------------- expand
    def finalize(self) -> "CfgNode":
        """Expand every task node into a full node (global defaults it does not set, then its own YAML,
        then CLI global keys, then its CLI keys), expand label sets, check NAME uniqueness."""
        shared_target = self.__dict__["_shared_target_template"]  # set on the default tree (defaults.py)
        cli_global = self.__dict__.get("_cli_global", {})
        cli_task = self.__dict__.get("_cli_task", {})
        tasks = []
        seen = set()
        for raw in self.TASKS:
            raw = _to_dict(raw)
            name = raw.get("NAME", "")
            if not name:
                raise ConfigError("every entry of TASKS needs a NAME")
            if name in seen:
                raise ConfigError(f"duplicate task NAME {name!r} in TASKS")
            seen.add(name)
            node = CfgNode({"NAME": name})
            for sub in TASK_SUBTREES:
                node[sub] = copy.deepcopy(self[sub])
            _merge_into(node, {k: v for k, v in raw.items() if k != "NAME"}, prefix="", source=f"TASKS.{name}")
            for key, value in cli_global.items():
                if key.split(".")[0] in TASK_SUBTREES:
                    _assign(node, key, value)
            for key, value in cli_task.get(name, {}).items():
                _assign(node, key, value)
            tasks.append(node)
        self.TASKS = tasks
        targets = []
        for raw in self.SHARED_TARGETS:
            node = shared_target.clone()
            _merge_into(node, _to_dict(raw), prefix="", source="SHARED_TARGETS")
            if not node.NAME:
                raise ConfigError("every entry of SHARED_TARGETS needs a NAME")
            targets.append(node)
        self.SHARED_TARGETS = targets
        self.__dict__["_cli_global"] = {}
        self.__dict__["_cli_task"] = {}
        return self

    def published_report(self):
        """The :class:`~uniperceiver.config.published.ConversionReport` of a converted published config, or None."""
        return self.__dict__.get("_published_report")

    def task(self, name: str) -> "CfgNode":
        for node in self.TASKS:
            if node.NAME == name:
                return node
        raise ConfigError(f"no task named {name!r}; tasks: {', '.join(t.NAME for t in self.TASKS)}")

    def dump(self, **kwargs) -> str:
        return yaml.safe_dump(_to_dict(self), sort_keys=False, **kwargs)


# --------------------------------------------------------------------------------------------------- helpers
def _to_dict(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _to_dict(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_to_dict(v) for v in node]
    return node


def _check_unique_names(data: Dict[str, Any], filename: str) -> None:
    """Within one file a NAME of TASKS / SHARED_TARGETS appears once (across files, entries of one NAME merge)."""
    for key in ("TASKS", "SHARED_TARGETS"):
        entries = data.get(key)
        names = [e.get("NAME") for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
        dups = sorted({n for n in names if n and names.count(n) > 1})
        if dups:
            raise ConfigError(f"{filename}: duplicate {key} NAME {', '.join(map(repr, dups))}: each entry of one "
                              f"file needs its own NAME (to change a task of a _BASE_ file, repeat its NAME in a "
                              f"child file)")


def merge_dicts(dst: Dict[str, Any], src: Dict[str, Any]) -> Dict[str, Any]:
    """Deep-merge ``src`` into ``dst`` (plain dicts); TASKS / SHARED_TARGETS lists merge by NAME."""
    for key, value in src.items():
        if key in ("TASKS", "SHARED_TARGETS") and isinstance(value, list) and isinstance(dst.get(key), list):
            dst[key] = merge_named_lists(dst[key], value, key)
        elif isinstance(value, dict) and isinstance(dst.get(key), dict):
            merge_dicts(dst[key], value)
        else:
            dst[key] = copy.deepcopy(value)
    return dst


def merge_named_lists(parent: List[dict], child: List[dict], where: str) -> List[dict]:
    out = [copy.deepcopy(_to_dict(p)) for p in parent]
    index = {p.get("NAME"): i for i, p in enumerate(out)}
    for entry in child:
        if not isinstance(entry, dict) or not entry.get("NAME"):
            raise ConfigError(f"{where}: every entry needs a NAME, got {entry!r}")
        entry = _to_dict(entry)
        if entry["NAME"] in index:
            merge_dicts(out[index[entry["NAME"]]], entry)
        else:
            index[entry["NAME"]] = len(out)
            out.append(copy.deepcopy(entry))
    return out


def _lookup(node: CfgNode, key: str, shown_key: str) -> Any:
    """The value of dotted ``key`` in ``node``; an unknown key names the closest valid ones.  ``shown_key``
    is how the user typed it (``TASKS.<NAME>.`` + key for task overrides)."""
    shown_prefix = shown_key[: len(shown_key) - len(key)]
    cur = node
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(cur, dict) or part not in cur:
            prefix = ".".join(parts[:i])
            keys = list(cur.keys()) if isinstance(cur, dict) else []
            cand = [shown_prefix + (f"{prefix}.{k}" if prefix else k) for k in keys]
            raise ConfigError(f"unknown config key {shown_key}{_closest(shown_prefix + '.'.join(parts[: i + 1]), cand)}")
        cur = cur[part]
    return cur


def _assign(node: CfgNode, full_key: str, value: Any) -> None:
    parts = full_key.split(".")
    cur = node
    for part in parts[:-1]:
        cur = cur[part]
    cur[parts[-1]] = value


def _merge_into(node: CfgNode, data: Dict[str, Any], prefix: str, source: str) -> None:
    for key, value in data.items():
        full_key = f"{prefix}{key}"
        if key not in node:
            cand = [f"{prefix}{k}" for k in node.keys()]
            raise ConfigError(f"{source}: unknown config key {full_key}{_closest(full_key, cand)}")
        default = node[key]
        if isinstance(default, CfgNode):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {full_key} is a sub-tree; got {value!r}")
            _merge_into(default, value, prefix=f"{full_key}.", source=source)
        elif key in ("TASKS", "SHARED_TARGETS") and not prefix:
            continue  # handled by merge_from_dict
        else:
            try:
                node[key] = _coerce(value, default, full_key)
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None


def _task_template(cfg: CfgNode) -> CfgNode:
    return CfgNode({"NAME": "", **{sub: cfg[sub] for sub in TASK_SUBTREES}})


def _validate_task(entry: dict, template: CfgNode, source: str) -> None:
    name = entry.get("NAME", "?")
    probe = copy.deepcopy(template)
    _merge_into(probe, entry, prefix="", source=f"{source}: task {name}")
