"""Every file a run writes goes through here.

A run folder (what `reinforce-jax train` and `sweep` write, `run_experiment`'s and
`run_sweep`'s `out_dir`) is written only through these functions:

* `write_bytes`, `write_text` and `atomic_writer` write a whole file: to a temporary
  file in the same folder, flushed to disk, then renamed over the old one
  (`os.replace`), so a reader, or a process killed while writing, finds the old
  file or the new one, never part of one.
* `open_append` opens a file to append rows to (`metrics.jsonl`), with
  `O_APPEND | O_NOFOLLOW`.
* `refuse_links` checks a folder that a library writes itself (orbax's
  `checkpoints/`, TensorBoard's `tensorboard/`) before it writes there.
* `lock_folder` takes an exclusive lock on a run folder for the life of a run
  (`fcntl.flock` on `run.lock` in it, which holds the process ID), so a second run
  into the same folder is refused instead of mixing its files with the first's.

None of them writes through a symbolic link inside the run folder: where the file,
or a folder between the run folder and it, is a link, they raise `SymlinkError`
(an `OSError` naming the path) and write nothing. A link planted in a run folder
(`params.msgpack -> ../elsewhere/x`) would otherwise make a run overwrite a file
outside it. The run folder itself, and the folders above it, may be links.

POSIX only (`O_NOFOLLOW`, `flock` and paths relative to an open folder).
Importing this module does not import JAX.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import secrets
import stat
import time
from collections.abc import Iterator
from typing import IO, NamedTuple

__all__ = [
    "atomic_writer",
    "FolderInUseError",
    "FolderLock",
    "lock_folder",
    "LOCK_FILE",
    "open_append",
    "refuse_links",
    "SymlinkError",
    "write_bytes",
    "write_text",
]

LOCK_FILE = "run.lock"  # in the run folder while a run holds it; holds the run's process ID

_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class SymlinkError(OSError):
  """A file a run would write, or a folder on its way, is a symbolic link: nothing is written.

  `filename` is the link's path; `str(error)` is one line naming it.
  """

  def __init__(self, path: str | os.PathLike):
    super().__init__(errno.ELOOP, "is a symbolic link, and a run does not write through "
                     "links (remove the link, or choose another folder)", os.fspath(path))

  def __str__(self) -> str:
    return f"{self.filename}: {self.strerror}"


class FolderInUseError(RuntimeError):
  """Another process holds the run folder's lock; `pid` is its process ID (None if unknown)."""

  def __init__(self, folder: str | os.PathLike, pid: int | None):
    self.folder, self.pid = pathlib.Path(folder), pid
    holder = "another process" if pid is None else f"process {pid}"
    super().__init__(f"{folder}: in use by another run ({holder} holds "
                     f"{self.folder / LOCK_FILE}); wait for it to end, or choose another folder")


class _Where(NamedTuple):
  root: pathlib.Path       # absolute, links not resolved: what is opened
  parts: tuple[str, ...]   # the path below `root`
  shown: pathlib.Path      # the root as the caller gave it: what messages name

  def name(self, count: int) -> pathlib.Path:
    """The path of the first `count` parts, as messages name it."""
    return self.shown.joinpath(*self.parts[:count])


def _split(path: str | os.PathLike, root: str | os.PathLike | None) -> _Where:
  """Where `path` lies below `root` (default: its own folder)."""
  given = pathlib.Path(path)
  shown = given.parent if root is None else pathlib.Path(root)
  absolute = pathlib.Path(os.path.abspath(given))
  try:
    parts = absolute.relative_to(os.path.abspath(shown)).parts
  except ValueError:
    raise ValueError(f"root {root} does not contain {path}") from None
  if not parts:
    raise ValueError(f"path {path} is the run folder {root} itself, not a file in it")
  return _Where(pathlib.Path(os.path.abspath(shown)), parts, shown)


def _raise_if_link(name: str, path: pathlib.Path, dir_fd: int | None = None) -> None:
  """Raises `SymlinkError(path)` if `name` (in the folder `dir_fd`) is a symbolic link."""
  try:
    mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
  except (FileNotFoundError, NotADirectoryError):
    return
  if stat.S_ISLNK(mode):
    raise SymlinkError(path)


def _open_folder(where: _Where) -> int:
  """A file descriptor of the folder of `where`, reached without following a link below its root.

  Raises:
    SymlinkError: a folder between the root and the file is a symbolic link.
    OSError: a folder is missing or cannot be opened.
  """
  fd = os.open(where.root, _FOLDER_FLAGS)
  try:
    for count, part in enumerate(where.parts[:-1], start=1):
      try:
        child = os.open(part, _FOLDER_FLAGS | _NOFOLLOW, dir_fd=fd)
      except OSError:
        _raise_if_link(part, where.name(count), fd)
        raise
      os.close(fd)
      fd = child
  except BaseException:
    os.close(fd)
    raise
  return fd


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w", *,
                  root: str | os.PathLike | None = None,
                  newline: str | None = None) -> Iterator[IO]:
  """Writes the whole file `path`: what the block writes replaces it when the block ends.

  The block writes to a temporary file in the same folder; when it ends without
  an exception the file is flushed to disk and renamed over `path` (`os.replace`);
  when it raises, the temporary file is removed and `path` is left as it was.

  Args:
    path: the file to write.
    mode: "w" (text, UTF-8) or "wb".
    root: the run folder: no folder between it and `path` may be a symbolic link
      (default: `path`'s folder, so only `path` itself is checked).
    newline: as `open`'s, for text (the `csv` module wants "").

  Returns:
    A context manager that yields the open temporary file.

  Raises:
    SymlinkError: `path`, or a folder between `root` and it, is a symbolic link.
    ValueError: `mode` is not "w" or "wb", or `root` does not contain `path`.
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
  where = _split(path, root)
  name = where.parts[-1]
  folder = _open_folder(where)
  try:
    _raise_if_link(name, where.name(len(where.parts)), folder)
    temporary = f".{name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666,
                 dir_fd=folder)
    try:
      text = {} if mode == "wb" else {"encoding": "utf-8", "newline": newline}
      with os.fdopen(fd, mode, **text) as file:
        yield file
        file.flush()
        os.fsync(file.fileno())
      # A link put at `name` meanwhile is replaced itself: nothing is written through it.
      os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
      with contextlib.suppress(OSError):
        os.unlink(temporary, dir_fd=folder)
      raise
    with contextlib.suppress(OSError):  # the rename too survives a crash
      os.fsync(folder)
  finally:
    os.close(folder)


def write_bytes(path: str | os.PathLike, data: bytes, *,
                root: str | os.PathLike | None = None) -> None:
  """Writes `data` as the whole file `path` (`atomic_writer`: a temporary file, renamed).

  Args:
    path: the file to write.
    data: its new contents.
    root: the run folder (see `atomic_writer`).

  Raises:
    SymlinkError: `path`, or a folder between `root` and it, is a symbolic link.
  """
  with atomic_writer(path, "wb", root=root) as file:
    file.write(data)


def write_text(path: str | os.PathLike, text: str, *,
               root: str | os.PathLike | None = None) -> None:
  """Writes `text` (UTF-8) as the whole file `path` (`atomic_writer`: a temporary file, renamed).

  Args:
    path: the file to write.
    text: its new contents.
    root: the run folder (see `atomic_writer`).

  Raises:
    SymlinkError: `path`, or a folder between `root` and it, is a symbolic link.
  """
  with atomic_writer(path, "w", root=root) as file:
    file.write(text)


def open_append(path: str | os.PathLike, *, root: str | os.PathLike | None = None) -> IO[str]:
  """Opens the text file `path` (UTF-8) to append to, creating it if missing.

  Opened with `O_APPEND | O_NOFOLLOW`: every write goes to the end, and a link at
  `path` is refused rather than followed.

  Args:
    path: the file.
    root: the run folder (see `atomic_writer`).

  Returns:
    The open file; the caller closes it.

  Raises:
    SymlinkError: `path`, or a folder between `root` and it, is a symbolic link.
  """
  where = _split(path, root)
  name = where.parts[-1]
  folder = _open_folder(where)
  try:
    try:
      fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o666,
                   dir_fd=folder)
    except OSError:
      _raise_if_link(name, where.name(len(where.parts)), folder)
      raise
  finally:
    os.close(folder)
  return os.fdopen(fd, "a", encoding="utf-8")


def refuse_links(path: str | os.PathLike, *, root: str | os.PathLike | None = None) -> None:
  """Checks a file or folder that another library writes (orbax, TensorBoard) before it does.

  Nothing is checked where `path` does not exist yet (the library creates it).

  Args:
    path: the file or folder.
    root: the run folder: no folder between it and `path` may be a symbolic link
      (default: `path`'s folder).

  Raises:
    SymlinkError: `path`, anything below it, or a folder between `root` and it is
      a symbolic link.
  """
  where = _split(path, root)
  try:
    folder = _open_folder(where)
  except SymlinkError:
    raise
  except OSError:  # a folder on the way does not exist yet: nothing to check
    return
  shown = where.name(len(where.parts))
  try:
    _raise_if_link(where.parts[-1], shown, folder)
  finally:
    os.close(folder)
  for inside, folders, files in os.walk(shown):  # does not follow links; lists them
    for name in (*folders, *files):
      if os.path.islink(os.path.join(inside, name)):
        raise SymlinkError(os.path.join(inside, name))


def _same_file(fd: int, path: pathlib.Path) -> bool:
  """Whether `path` still names the open file `fd` (not removed, not replaced)."""
  try:
    named = os.stat(path, follow_symlinks=False)
  except FileNotFoundError:
    return False
  mine = os.fstat(fd)
  return (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino)


def _read_pid(fd: int) -> int | None:
  """The process ID in a lock file (waits briefly for a holder that is writing it)."""
  for _ in range(20):
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    if text.isdigit():
      return int(text)
    time.sleep(0.01)
  return None


def _remove_empty(folders: list[pathlib.Path]) -> None:
  """Removes `folders` (deepest first) while they are empty."""
  for folder in folders:
    try:
      folder.rmdir()
    except OSError:  # not empty: something was written there
      break


class FolderLock:
  """The exclusive lock on a run folder, from `lock_folder` until `release`.

  Used as a context manager, it is released when the block ends. Releasing
  removes the lock file, and the folders `lock_folder` created if they are still
  empty (a run that failed before writing anything leaves no folder behind).
  """

  def __init__(self, folder: pathlib.Path, fd: int, created: list[pathlib.Path]):
    self.folder, self._fd, self._created = folder, fd, created

  @property
  def held(self) -> bool:
    """Whether the lock is still held."""
    return self._fd is not None

  def release(self) -> None:
    """Removes the lock file and lets the lock go (a second call does nothing)."""
    if self._fd is None:
      return
    path = self.folder / LOCK_FILE
    try:
      if _same_file(self._fd, path):  # removed while still held: the next run makes its own
        path.unlink()
    except OSError:
      pass
    finally:
      os.close(self._fd)  # closing the file releases the flock
      self._fd = None
    _remove_empty(self._created)

  def __enter__(self) -> FolderLock:
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()


def lock_folder(folder: str | os.PathLike) -> FolderLock:
  """Takes the exclusive lock on run folder `folder` (creating it), or refuses at once.

  The lock is a `fcntl.flock` on `folder/run.lock`, which holds this process's
  ID. The operating system lets it go when the process ends, however it ends, so
  a lock file left by a killed process is taken over. The lock is per open file:
  a second `lock_folder` on the same folder fails in the same process too.

  Args:
    folder: the run folder; it and its missing parents are created.

  Returns:
    The held `FolderLock` (a context manager that releases it).

  Raises:
    FolderInUseError: another process holds the lock (its message names that
      process's ID).
    SymlinkError: `folder/run.lock` is a symbolic link.
  """
  import fcntl

  folder = pathlib.Path(folder)
  created = [p for p in (folder, *folder.parents) if not p.exists()]
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / LOCK_FILE
  try:
    while True:
      try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o666)
      except OSError:
        _raise_if_link(str(path), path)
        raise
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        raise FolderInUseError(folder, pid) from None
      except BaseException:
        os.close(fd)
        raise
      if _same_file(fd, path):
        break
      os.close(fd)  # its holder removed it as it ended, after we opened it: take the new one
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except BaseException:
      os.close(fd)
      raise
  except BaseException:
    _remove_empty(created)
    raise
  return FolderLock(folder, fd, created)
