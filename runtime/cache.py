"""The on-disk cache of compiled plans.

An entry is a folder `<GRAPHC_CACHE_DIR>/plans/<plan>-<key>/` holding the generated module
(`plan.py`, readable), numba's cache of its `plan` function (`__pycache__/`, written by
numba's cache=True) and `manifest.json` (versions and a sha256 of every file). The key hashes
the generated source (which embeds the plan's IR and memory plan), the runtime's own sources
(kernels, codegen, memory planning) and the numba / numpy / Python versions, so a changed plan
or kernel never meets an old entry. An entry whose manifest is missing, unreadable, of other
versions, or whose files do not match their checksums is removed and rebuilt; the reason is
reported in CompileInfo.reason. Entries are built in a private temporary folder and renamed
into place, so concurrent processes never see a half-written one.

The cache is trusted code: numba's index is a pickle, so whoever can write the folder can run
code in the next process that compiles. The sha256 manifests catch corruption, not tampering.
So the folder is created private to the user (mode 0700), and a folder (or its `plans/`) that
another user owns, or that group or others may write, is refused with CacheError, as ssh and
pip refuse theirs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
import types
import uuid
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

from graphc.ir import GraphcError

from . import glue_llvm, kernel_lib
from .plan_jit import glue_compile

log = logging.getLogger("graphc.runtime")
FORMAT = 1
_RUNTIME_DIR = Path(__file__).resolve().parent
_KEYED_SOURCES = ("kernels.py", "codegen.py", "memory.py", "cache.py", "plan_jit.py", "lower.py", "kernel_lib.py",
                  "lower_llvm.py")
_loaded: dict[tuple[str, str], tuple[types.ModuleType, str]] = {}  # (cache folder, key) -> (module, entry), this process


@dataclass
class CompileInfo:
    """How an executable got its native code. status: compiled | cached (loaded from disk) |
    reused (already loaded in this process) | interpreted (mode="interpret") | python (NUMBA_DISABLE_JIT)."""

    status: str
    key: str = ""
    path: str = ""
    codegen_seconds: float = 0.0
    seconds: float = 0.0  # compiling or loading, per status
    reason: str = ""  # why an existing entry was not used
    kernels: dict | None = None  # generated kernels: how many compiled / loaded from the kernel library / reused,
    # and how many were lowered to LLVM IR / through numba
    fallbacks: list[str] | None = None  # why each numba-lowered kernel was not lowered to LLVM IR
    glue: str = ""  # "llvm (compiled|cached|reused)" (runtime/glue_llvm.py), or "numba (why not LLVM)"

    @property
    def from_cache(self) -> bool:
        return self.status in ("cached", "reused")

    def __str__(self) -> str:
        what = {"compiled": "compiled", "cached": "loaded from cache", "reused": "reused (loaded earlier)",
                "interpreted": "interpreted (no native code)", "python": "plain Python (NUMBA_DISABLE_JIT)"}[self.status]
        s = f"{what} in {self.seconds * 1e3:.1f} ms (codegen {self.codegen_seconds * 1e3:.1f} ms)"
        if self.kernels and any(self.kernels.values()):
            s += (f"; generated kernels: {self.kernels['compiled']} compiled, {self.kernels['cached']} from the "
                  f"kernel library, {self.kernels['reused']} reused ({self.kernels.get('llvm', 0)} LLVM, "
                  f"{self.kernels.get('numba', 0)} numba")
            s += f": {'; '.join(self.fallbacks)})" if self.fallbacks else ")"
        if self.glue:
            s += f"; glue: {self.glue}"
        if self.path:
            s += f", {self.path}"
        return s + (f"; {self.reason}" if self.reason else "")


def cache_root() -> Path:
    d = os.environ.get("GRAPHC_CACHE_DIR")
    return Path(d).expanduser() if d else Path.home() / ".cache" / "graphc"


class CacheError(GraphcError, OSError):
    """The compile cache folder cannot be used (not a folder, or not private to this user)."""


def trusted_root() -> Path:
    """cache_root(), created private (0700) if missing; CacheError if it is not a folder, is
    another user's, or group/others may write it (the same for its plans/ and kernels/ folders)."""
    root = cache_root()
    where = f"the compile cache {root} (GRAPHC_CACHE_DIR)" if os.environ.get("GRAPHC_CACHE_DIR") else \
        f"the compile cache {root}"
    if root.exists() and not root.is_dir():
        raise CacheError(f"{where} is a file, not a folder: point GRAPHC_CACHE_DIR at a folder")
    for d in (root, root / "plans", root / "kernels"):
        if not d.exists():
            old = os.umask(0o077)
            try:
                d.mkdir(parents=True, mode=0o700, exist_ok=True)
            except OSError as e:
                raise CacheError(f"cannot create {where}: {e.strerror or e}") from None
            finally:
                os.umask(old)
        _check_private(d, where)
    return root


def _check_private(d: Path, where: str) -> None:
    st = d.stat()
    if not d.is_dir():
        raise CacheError(f"{where}: {d} is not a folder")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise CacheError(f"{where}: {d} belongs to another user (uid {st.st_uid}, you are {os.getuid()}); its cached "
                         f"code would run as you. Use a folder of your own")
    if st.st_mode & 0o022:
        raise CacheError(f"{where}: {d} can be written by {'group and others' if st.st_mode & 0o022 == 0o022 else 'group' if st.st_mode & 0o020 else 'others'} "
                         f"(mode {st.st_mode & 0o777:o}), who could plant code that runs when you compile. "
                         f"Run `chmod go-w {d}` or choose another GRAPHC_CACHE_DIR")


def jit_disabled() -> bool:
    return bool(numba.config.DISABLE_JIT)


def _versions() -> dict[str, str]:
    return {"format": str(FORMAT), "numba": numba.__version__, "numpy": np.__version__,
            "python": sys.version.split()[0], "machine": platform.machine(), "jit": str(not jit_disabled())}


_RUNTIME_HASH: str | None = None


def _runtime_hash() -> str:
    global _RUNTIME_HASH
    if _RUNTIME_HASH is None:
        h = hashlib.sha256()
        for name in _KEYED_SOURCES:
            h.update(name.encode() + b"\0" + (_RUNTIME_DIR / name).read_bytes() + b"\0")
        _RUNTIME_HASH = h.hexdigest()
    return _RUNTIME_HASH


def plan_key(source: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(_versions(), sort_keys=True).encode())
    h.update(_runtime_hash().encode())
    h.update(source.encode())
    return h.hexdigest()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _entry_dir(root: Path, name: str, key: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]
    return root / "plans" / f"{safe}-{key[:24]}"


def check_manifest(d: Path, key: str, extra: dict | None = None, required=None) -> str | None:
    """None if `d`'s manifest.json is of this key and these versions (and `extra`'s fields), lists
    what `required(files)` asks for, and every file it lists is there with its sha256; else what
    is wrong. Plans, numba kernels and LLVM kernels all store their entries this way."""
    mf = d / "manifest.json"
    if not mf.exists():
        return "incomplete entry (no manifest)"
    try:
        m = json.loads(mf.read_text())
    except (OSError, ValueError) as e:
        return f"unreadable manifest ({e.__class__.__name__})"
    if (not isinstance(m, dict) or m.get("key") != key or m.get("versions") != _versions()
            or any(m.get(k) != v for k, v in (extra or {}).items())):
        return "manifest of another key or other versions"
    files = m.get("files")
    if not isinstance(files, dict) or (required is not None and not required(files)):
        return "manifest lists no " + getattr(required, "__doc__", "files")
    for rel, digest in sorted(files.items()):
        p = d / rel
        if not p.is_file():
            return f"missing file {rel}"
        if _sha(p) != digest:
            return f"checksum mismatch in {rel}"
    return None


def write_manifest(d: Path, key: str, files: list[str], seconds: float, extra: dict | None = None) -> None:
    """Write `d`'s manifest.json atomically: key, versions, `extra`, and a sha256 of each file."""
    m = {"key": key, "versions": _versions(), **(extra or {}), "files": {rel: _sha(d / rel) for rel in files},
         "compile_seconds": round(seconds, 4), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = d / f"manifest.json.{uuid.uuid4().hex}"
    tmp.write_text(json.dumps(m, indent=1, sort_keys=True))
    os.replace(tmp, d / "manifest.json")


def numba_cache_files(d: Path) -> list[str]:
    """The numba cache files (index and data) in `d`/__pycache__, relative to `d`."""
    pyc = d / "__pycache__"
    return [f"__pycache__/{p.name}" for p in sorted(pyc.iterdir()) if p.suffix in (".nbi", ".nbc")] if pyc.is_dir() else []


def _plan_and_index(files) -> bool:
    """plan or numba index"""
    return "plan.py" in files and any(f.endswith(".nbi") for f in files)


def _check_entry(d: Path, key: str, source: str) -> str | None:
    """None if the entry is complete and intact, else what is wrong with it."""
    problem = check_manifest(d, key, required=_plan_and_index)
    if problem is None and (d / "plan.py").read_text() != source:
        return "plan.py differs from the generated source"
    return problem


def _write_manifest(d: Path, key: str, name: str, seconds: float) -> None:
    glue = [f for f in ("glue.ll", "glue.o") if (d / f).is_file()]
    write_manifest(d, key, ["plan.py", *glue, *numba_cache_files(d)], seconds, {"name": name})


def _import(path: Path, modname: str, source: str, pin: str = "plan") -> types.ModuleType:
    """Execute the plan module (or a kernel library entry's) from its file (no .pyc: numba's files
    are the only cache there). numba rebuilds a cached function's environment by importing its
    module, hence sys.modules."""
    mod = types.ModuleType(modname)
    mod.__file__ = str(path)
    sys.modules[modname] = mod
    exec(compile(source, str(path), "exec"), mod.__dict__)
    if not jit_disabled():
        _pin_numba_cache(getattr(mod, pin), path)
    return mod


def _moved(mod: types.ModuleType, old: Path, new: Path) -> None:
    """The module's file moved (its entry was renamed into place): name the new place in its code
    objects, so tracebacks through the runner point at a file that exists, not the build folder."""
    def rename(code):
        consts = tuple(rename(c) if isinstance(c, types.CodeType) else c for c in code.co_consts)
        return code.replace(co_filename=str(new), co_consts=consts) if code.co_filename == str(old) else code

    mod.__file__ = str(new)
    for value in list(vars(mod).values()):
        fn = getattr(value, "py_func", value)  # numba dispatchers keep the Python function
        if isinstance(fn, types.FunctionType):
            fn.__code__ = rename(fn.__code__)


def _hits(fn) -> int:
    return sum(fn.stats.cache_hits.values())


def _pin_numba_cache(fn, path: Path) -> None:
    """Keep numba's cache of `plan` in the entry's own __pycache__, whatever NUMBA_CACHE_DIR or
    NUMBA_CACHE_LOCATOR_CLASSES say, so an entry is one self-contained, checksummed folder."""
    from numba.core import caching

    class PinnedImpl(caching.CompileResultCacheImpl):
        def __init__(self, py_func):
            super().__init__(py_func)
            self._locator = caching.InTreeCacheLocator(py_func, str(path))
            self._locator.ensure_cache_path()
            modname = os.path.splitext(os.path.basename(py_func.__code__.co_filename))[0]
            self._filename_base = self.get_filename_base(f"{modname}.{py_func.__qualname__}",
                                                         getattr(sys, "abiflags", ""))

    class PinnedCache(caching.FunctionCache):
        _impl_class = PinnedImpl

    fn._cache = PinnedCache(fn.py_func)


def _fallbacks(kernels) -> list[str] | None:
    """Why kernels kept numba's lowering, each reason once (with a count when several share it)."""
    why = [k.fallback for k in kernels if getattr(k, "fallback", "")]
    return [r if why.count(r) == 1 else f"{r} (x{why.count(r)})" for r in dict.fromkeys(why)] or None


def load_or_build(source: str, name: str, signature, kernels=(), glue=None) -> tuple[types.ModuleType, CompileInfo]:
    """The plan module for `source` with `plan` compiled for `signature` (numba types): loaded from
    the cache when an intact entry exists, else compiled and stored (its generated `kernels`
    first, through the kernel library)."""
    key = plan_key(source)
    root = trusted_root()
    modname = f"graphc_plan_{key[:20]}"
    memo = (str(root), key)
    if memo in _loaded:
        mod, where = _loaded[memo]
        return mod, CompileInfo("reused", key, where)

    if jit_disabled():  # plain Python: nothing to cache; the module is still written out to be read
        d = _entry_dir(root, name, key)
        d.mkdir(parents=True, exist_ok=True)
        path = d / "plan.py"
        if not path.exists() or path.read_text() != source:
            path.write_text(source)
        t0 = time.perf_counter()
        mod = _import(path, modname, source)
        _loaded[memo] = (mod, str(d))
        return mod, CompileInfo("python", key, str(d), seconds=time.perf_counter() - t0)

    d = _entry_dir(root, name, key)
    reason = ""
    if d.exists():
        problem = _check_entry(d, key, source)
        if problem is None:
            t0 = time.perf_counter()
            if glue is None:
                kernel_lib.modules(root, list(kernels))
            else:  # the LLVM glue calls its numba kernels by address: load them from the library
                kernel_lib.prepare(root, list(kernels))
            mod = _import(d / "plan.py", modname, source)
            how = _glue(glue, mod, d)
            hits = _hits(mod.plan)
            with glue_compile():
                mod.plan.compile(signature)
            seconds = time.perf_counter() - t0
            _loaded[memo] = (mod, str(d))
            if _hits(mod.plan) > hits:
                log.info("plan %s: loaded from cache in %.1f ms (%s)", name, seconds * 1e3, d)
                return mod, CompileInfo("cached", key, str(d), seconds=seconds, glue=how)
            # numba found its index stale and compiled: the entry now holds the new code
            _write_manifest(d, key, name, seconds)
            return mod, CompileInfo("compiled", key, str(d), seconds=seconds, reason="numba's cache in the entry was stale",
                                    glue=how)
        reason = f"rebuilt {d.name}: {problem}"
        log.warning("plan %s: cache entry %s is unusable (%s); rebuilding", name, d, problem)
        shutil.rmtree(d, ignore_errors=True)

    tmp = d.parent / f".tmp-{d.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    (tmp / "plan.py").write_text(source)
    t0 = time.perf_counter()
    try:
        library = kernel_lib.prepare(root, list(kernels))
        mod = _import(tmp / "plan.py", modname, source)
        how = _glue(glue, mod, tmp)
        with glue_compile():
            mod.plan.compile(signature)
    except BaseException:  # nothing half-built stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t0
    _write_manifest(tmp, key, name, seconds)
    try:
        os.rename(tmp, d)
    except OSError:  # another process stored the same entry first; ours is the same code
        shutil.rmtree(tmp, ignore_errors=True)
    _moved(mod, tmp / "plan.py", d / "plan.py")
    where = d
    _loaded[memo] = (mod, str(d))
    log.info("plan %s: compiled in %.1f ms (%s)", name, seconds * 1e3, where)
    return mod, CompileInfo("compiled", key, str(where), seconds=seconds, reason=reason, kernels=library,
                            fallbacks=_fallbacks(kernels), glue=how)


def _glue(glue, mod, folder: Path) -> str:
    """Bind and load the plan's LLVM glue (before numba compiles or loads the entry that calls
    it); what compile_info says of it."""
    return "" if glue is None else f"llvm ({glue_llvm.load(glue, mod, folder)})"
