"""What a task loaded for its step: ``current.model.loaded``, ``current.huggingface_hub.loaded``.

A read-only mapping ``{name: local directory}`` with, beside it, ``info[name]`` (the reference
dict of what was loaded there).  It also owns the directories: :meth:`LoadedModels.directory`
hands out a fresh temporary directory under ``temp_dir_root`` (or creates the path asked for),
and :meth:`LoadedModels.close` removes every temporary one when the task ends, so a step that
loads a model leaves nothing behind on the machine (a path the step asked for stays).  A load
that did not happen (``best_effort_load=True``) is recorded as ``None``.

Nothing here reads a store: the callers (``current.model``, ``current.huggingface_hub``) load
and then :meth:`LoadedModels.add` what they loaded.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator, Mapping
from typing import Any, Optional

from ..core.user_dirs import config_error, make_temp_dir, user_path


class LoadedModels(Mapping):
    """``{name: local directory}`` of what a step loaded; ``.info[name]`` is its reference.

    ``name in loaded``, ``loaded[name]`` (``None`` for a load skipped by
    ``best_effort_load=True``), iteration over the names, ``len(loaded)``, ``loaded.info[name]``
    and ``loaded.cleanup(artifact_name)`` (``cleanup()``: every entry) behave as in the
    reference extension's ``LoadedModels``.

    Parameters
    ----------
    temp_dir_root : str, optional
        Parent of the temporary directories (created if absent; default: the system temp dir).
    prefix : str
        Start of the temporary directories' names (followed by the entry's name).
    owner : str
        The decorator whose ``temp_dir_root`` it is (named in errors).
    """

    def __init__(
        self,
        temp_dir_root: Optional[str] = None,
        prefix: str = "metaflow_models_",
        owner: str = "@model",
    ):
        self._given = temp_dir_root  # as the user wrote it, for messages
        # Absolute, ~ expanded (core/user_dirs.py): a directory handed out must not change
        # meaning if the step changes directory.
        self._temp_dir_root = temp_dir_root and os.path.abspath(user_path(temp_dir_root))
        self._prefix = prefix
        self._owner = owner
        self._paths: dict[str, Optional[str]] = {}
        self._info: dict[str, dict] = {}
        # Directories this object created (temporary ones, and a requested path that did not
        # exist): the only ones cleanup() and close() remove.
        self._owned: dict[str, list[str]] = {}
        self._temporary: set[str] = set()  # of those, the ones close() removes

    # ------------------------------------------------------------------ the mapping
    def __getitem__(self, name: str) -> Optional[str]:
        try:
            return self._paths[name]
        except KeyError:
            raise KeyError(
                "Nothing named %r was loaded in this step (loaded: %s)."
                % (name, ", ".join(repr(n) for n in self._paths) or "nothing")
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._paths))

    def __len__(self) -> int:
        return len(self._paths)

    def __repr__(self) -> str:
        return "LoadedModels(%r)" % (self._paths,)

    @property
    def info(self) -> dict[str, dict]:
        """``{name: reference dict}`` of every entry (the reference it was loaded from, with
        its ``key``, ``metadata`` and size)."""
        return self._info

    # ------------------------------------------------------------------ used by the loaders
    def directory(self, name: str, path: Optional[str] = None) -> str:
        """The directory to load entry ``name`` into: ``path`` (created if absent), else a new
        empty temporary directory under ``temp_dir_root``.  Directories created here are
        removed by :meth:`cleanup`, temporary ones also by :meth:`close`."""
        if path is not None:
            target = os.path.abspath(user_path(path))  # ~ is home (core/user_dirs.py)
            if not os.path.exists(target):
                try:
                    os.makedirs(target)
                except OSError as exc:  # the user's path=: say which and why, not a traceback
                    raise config_error("Loading %r (path=%r)" % (name, path), target, exc) from None
                self._owned.setdefault(name, []).append(target)
            return target
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40]
        what = "%s(temp_dir_root=%r)" % (self._owner, self._given)
        target = make_temp_dir(self._temp_dir_root, "%s%s_" % (self._prefix, safe), what)
        self._owned.setdefault(name, []).append(target)
        self._temporary.add(target)
        return target

    def add(self, name: str, path: Optional[str], info: Optional[dict] = None) -> None:
        """Record that ``name`` is loaded at ``path`` (None: skipped), from reference ``info``."""
        self._paths[name] = path
        self._info[name] = dict(info) if info is not None else {}

    def discard(self, name: str, path: str) -> None:
        """Undo :meth:`directory` of ``name`` that returned ``path`` (its load failed): remove
        it if it was created there."""
        owned = self._owned.get(name, [])
        if path in owned:
            owned.remove(path)
            shutil.rmtree(path, ignore_errors=True)

    def cleanup(self, artifact_name: Optional[str] = None, *, name: Optional[str] = None) -> None:
        """Remove entry ``artifact_name`` (the reference extension's spelling; ``name=`` is
        the same): its directory if this object created it (a temporary one, or a requested
        path that did not exist before the load), else only the entry (a directory of yours
        that existed is never deleted).  Without a name, every entry, as the reference's
        ``current.huggingface_hub.loaded.cleanup()`` does.

        Raises
        ------
        KeyError
            Nothing named so was loaded.
        TypeError
            Both ``artifact_name`` and ``name`` given.
        """
        if artifact_name is not None and name is not None:
            raise TypeError(
                "cleanup() takes one name: artifact_name=%r or name=%r, not both."
                % (artifact_name, name)
            )
        chosen = artifact_name if artifact_name is not None else name
        for entry in [chosen] if chosen is not None else list(self._paths):
            self[entry]  # KeyError naming what was loaded
            for owned in self._owned.pop(entry, []):
                shutil.rmtree(owned, ignore_errors=True)
                self._temporary.discard(owned)
            del self._paths[entry]
            self._info.pop(entry, None)

    def close(self) -> None:
        """Remove every temporary directory (at the end of the task); a requested path stays."""
        for directory in self._temporary:
            shutil.rmtree(directory, ignore_errors=True)
        self._temporary.clear()
        self._owned.clear()


def as_info(reference: Any) -> dict:
    """A plain dict of a reference (for :attr:`LoadedModels.info`)."""
    return dict(reference) if isinstance(reference, Mapping) else {"key": str(reference)}


def temp_root(loaded: LoadedModels) -> Optional[str]:
    """Where ``loaded`` makes temporary directories: its ``temp_dir_root``, absolute and ``~``
    expanded (None: the system temp dir).  A function, not an attribute: ``current.model
    .loaded``'s public API is the reference extension's (tests/test_packaging.py locks it)."""
    return loaded._temp_dir_root
