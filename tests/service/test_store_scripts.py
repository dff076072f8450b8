"""The job store's Lua scripts and their declarations (app/core/store/scripts.py): the
names a .lua file uses and the names its declaration gives cannot drift apart, the
KEYS/ARGV that Python builds are what the generated prelude binds (in a real Redis), and
the files ship inside the built package."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import redis

from app.core.store import scripts
from app.core.store.scripts import SCRIPTS, Script

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
LUA_DIR = ROOT / "app" / "core" / "store" / "lua"
_USE = re.compile(r"\b([KA])\.([A-Za-z_]\w*)")
_FUNCTION = re.compile(r"^local function (\w+)\(([^)]*)\)", re.M)


def _code(text: str) -> str:
    """Lua without its comments (no string of these files holds ``--``)."""
    return re.sub(r"--[^\n]*", "", text)


def _uses(code: str) -> set[tuple[str, str]]:
    return set(_USE.findall(code))


def _lib_functions() -> dict[str, tuple[list[str], str]]:
    """lib.lua's functions: name -> (parameters, body)."""
    code = _code((LUA_DIR / "lib.lua").read_text())
    heads = list(_FUNCTION.finditer(code))
    out = {}
    for head, nxt in zip(heads, [*heads[1:], None], strict=True):
        body = code[head.end() : nxt.start() if nxt else len(code)]
        out[head.group(1)] = ([p.strip() for p in head.group(2).split(",")], body)
    return out


def _used_by(code: str, lib: dict[str, tuple[list[str], str]]) -> set[tuple[str, str]]:
    """The names ``code`` uses, also through the lib functions it calls (transitively)."""
    used = _uses(code)
    todo, seen = [code], set()
    while todo:
        text = todo.pop()
        for name, (_params, body) in lib.items():
            if name not in seen and re.search(rf"\b{name}\(", text):
                seen.add(name)
                used |= _uses(body)
                todo.append(body)
    return used


def test_every_file_is_declared_and_uses_names_only() -> None:
    files = {p.stem for p in LUA_DIR.glob("*.lua")}
    assert files == {"lib"} | {s.name for s in SCRIPTS}
    for path in LUA_DIR.glob("*.lua"):
        code = _code(path.read_text())
        # Bare indices, and the prelude's own cursor, belong to the generated prelude alone.
        assert not re.search(r"\b(KEYS|ARGV|_at)\b", code), path.name


def test_declared_names_and_used_names_agree() -> None:
    lib = _lib_functions()
    assert {"now_ms", "event", "hset_pairs", "finish_job"} <= set(lib)
    for name, (params, body) in lib.items():
        # lib.lua comes before the bindings: what it names, it is given.
        for table, _field in _uses(body):
            assert table in params, (name, table)
    for script in SCRIPTS:
        used = _used_by(_code(scripts.lua_text(script.name)), lib)
        declared = {("K", k) for k in script.keys} | {
            ("A", a) for a in (*script.args, *script.tails)
        }
        assert used - declared == set(), f"{script.name}: used, not declared"
        assert declared - used == set(), f"{script.name}: declared, not used"


def test_build_names_everything_and_refuses_the_rest() -> None:
    s = Script("t", keys=("a", "b"), args=("x", "n"), numbers=frozenset({"n"}), tails=("p", "q"))
    keys, argv = s.build({"b": "kb", "a": "ka"}, {"n": 3, "x": "vx", "q": ["q1"], "p": [1, 2]})
    assert keys == ["ka", "kb"]
    # Every tail but the last travels after its length.
    assert argv == ["vx", 3, 2, 1, 2, "q1"]
    good = {"x": "", "n": 1, "p": [], "q": []}
    with pytest.raises(TypeError, match="missing \\['b'\\]"):
        s.build({"a": "ka"}, good)
    with pytest.raises(TypeError, match="unknown \\['c'\\]"):
        s.build({"a": "ka", "b": "kb", "c": "kc"}, good)
    with pytest.raises(TypeError, match="missing \\['q'\\]"):
        s.build({"a": "ka", "b": "kb"}, {"x": "", "n": 1, "p": []})
    with pytest.raises(TypeError, match="unknown \\['y'\\]"):
        s.build({"a": "ka", "b": "kb"}, good | {"y": 1})
    with pytest.raises(TypeError, match="sequence"):
        s.build({"a": "ka", "b": "kb"}, good | {"q": "q1"})
    with pytest.raises(ValueError, match="twice"):
        Script("t", keys=("a", "a"), args=())
    with pytest.raises(ValueError, match="numbers"):
        Script("t", keys=(), args=("x",), numbers=frozenset({"y"}))
    with pytest.raises(ValueError, match="not fit"):
        Script("t", keys=("KEYS[1]",), args=())


@pytest.mark.parametrize("empty_tails", [False, True])
def test_the_prelude_binds_what_build_sends(redis_url: str, empty_tails: bool) -> None:
    """In Redis: each declared name holds the value given for it (a number where declared
    so, a string otherwise), each tail its items; and every whole script compiles."""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        for script in SCRIPTS:
            keys = {k: f"key:{k}" for k in script.keys}
            # Digits for the strings: a prelude that made one a number would show it.
            args: dict = {
                a: (i + 0.5 if a in script.numbers else str(i)) for i, a in enumerate(script.args)
            }
            tails = {
                t: [] if empty_tails else [f"{t}{j}" for j in range(2 + i)]
                for i, t in enumerate(script.tails)
            }
            kv, av = script.build(keys, args | tails)
            probe = script.prelude() + "return cjson.encode({K = K, A = A})"
            got = json.loads(r.eval(probe, len(kv), *kv, *av))
            assert got["K"] == keys, script.name
            # cjson writes an empty table as an object.
            bound = {n: (v if v != {} else []) for n, v in got["A"].items()}
            want = {a: (float(v) if a in script.numbers else v) for a, v in args.items()}
            assert {n: bound.get(n) for n in args} == want, script.name
            assert all(type(bound[n]) is type(args[n]) for n in args), script.name
            assert {t: bound.get(t) for t in script.tails} == tails, script.name
            assert set(bound) == set(args) | set(tails), script.name
            assert r.script_load(script.source)
    finally:
        r.close()


def test_scripts_load_from_the_installed_package(tmp_path: Path) -> None:
    """A wheel built with the project's pyproject.toml carries every .lua file, and the
    scripts read them from where the package is installed."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    # The model library's built-in checkpoints (megabytes) are not what this is about.
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "builtin")
    for pkg in ("app", "worker", "ddpm_core"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=skip)
    build = "from setuptools import build_meta as b; print(b.build_wheel(%r))"
    r = subprocess.run(
        [sys.executable, "-c", build % str(tmp_path / "dist")],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = tmp_path / "dist" / r.stdout.split()[-1]
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        shipped = {n for n in z.namelist() if n.startswith("app/core/store/lua/")}
        assert shipped == {f"app/core/store/lua/{p.name}" for p in LUA_DIR.glob("*.lua")}
        z.extractall(site)
    check = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(site)!r})
        from importlib import resources
        from pathlib import Path
        from app.core.store import scripts
        assert Path(scripts.__file__).is_relative_to({str(site)!r}), scripts.__file__
        lua = Path(str(resources.files("app.core.store"))) / "lua"
        assert lua.is_relative_to({str(site)!r}), lua
        lib = (lua / "lib.lua").read_text()
        for s in scripts.SCRIPTS:
            want = lib + s.prelude() + (lua / f"{{s.name}}.lua").read_text()
            assert s.source == want, s.name
        print(len(scripts.SCRIPTS))
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == [str(len(SCRIPTS))]
