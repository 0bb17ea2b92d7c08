"""``@checkpoint(upload=..., upload_errors=...)`` in a task process: where its saves commit and
what is uploaded when the task ends (docs/upload.md); what the task reads back, the tier and
the flow's store as one, is ``task/tiered_store.py``.

With ``upload="end"`` every save commits into the local tier (``core/tier.py``: a store on the
task's disk with the same keys the flow's store would give) and the reference it returns names
the flow's store with status ``"local"``.  When the task ends, whichever way,
:meth:`UploadPolicy.upload_at_end` uploads what a retry of this process would load (chosen over
every attempt's checkpoints, in the tier and in the flow's store: an earlier attempt's that
stayed local is not stranded), the newest of each series (name) it saved and, with
``keep_best``, the best ones of each rule, those not in the flow's store yet (the choice:
``core/upload_choice.py``); each upload's status goes ``uploading`` -> ``uploaded``/``failed``
in the tier's records (``core/upload_status.py``).

With ``upload_errors="warn"`` an upload or a commit to the flow's store that still fails after
the storage layer's bounded retries is one warning and status ``"failed"``: with
``upload="each"`` the checkpoint is committed into the tier instead, so it is not lost and the
end of the task tries the newest ``latest=True`` one again.

The tier is kept from growing (``core/tier_cleanup.py``): :meth:`UploadPolicy.sweep_at_start`
drops checkpoints older than ``METAFLOW_CHECKPOINT_LOCAL_TIER_DAYS``, :meth:`UploadPolicy.finish`
this writer's once its step succeeded, only those confirmed in the flow's store or superseded by
a newer ``latest=True`` one of their series there, then the tier's unreferenced blobs.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from typing import Any, Callable, Optional

from ..common.local_tier import TIER_METADATA as TIER_METADATA  # (decorator.py reads it)
from ..core import tier as tiers
from ..core import tier_cleanup as cleanup
from ..core import upload_status as status
from ..core.manifest import ManifestHeader
from ..core.position import Position
from ..core.retention import Retention
from ..core.scope import Scope
from ..core.store import CheckpointStore
from ..core.upload_choice import moot_in, superseded, to_upload
from ..errors import CheckpointConfigError, CheckpointException, StorageError
from ..fmt import describe_error


def upload_fields(upload: str, upload_errors: str, tier_base: Optional[str]) -> dict:
    """The ``TaskContext`` fields of a policy (its session's, its processes' via to_env)."""
    return {"upload": upload, "upload_errors": upload_errors, "tier_base": tier_base}


def tier_base(temp_dir_root: Optional[str], setting: Optional[str]) -> str:
    """Where the tier lives: ``@checkpoint(temp_dir_root=)``, else
    ``METAFLOW_CHECKPOINT_LOCAL_TIER``, else the system temp directory."""
    return temp_dir_root or setting or tempfile.gettempdir()


def policy_for(
    attributes: dict, remote: CheckpointStore, settings: Any, log: Callable[[str], None]
) -> Optional[UploadPolicy]:
    """The task's policy from the decorator's validated attributes, or None for the defaults
    (``upload="each"``, ``upload_errors="fail"``: every save commits to the flow's store)."""
    mode, errors = attributes.get("upload", "each"), attributes.get("upload_errors", "fail")
    if (mode, errors) == ("each", "fail"):
        return None
    base = tier_base(attributes.get("temp_dir_root"), getattr(settings, "local_tier", None))
    from ..common.settings import local_tier_days

    days = local_tier_days()  # read (and validated) at the task's start, before any I/O
    policy = UploadPolicy(remote, mode=mode, errors=errors, base=base, log=log)
    policy.sweep_at_start(days)
    return policy


class UploadPolicy:
    """The upload policy of one task process.

    Parameters
    ----------
    remote : CheckpointStore
        The flow's store.
    mode : str
        ``"each"`` or ``"end"`` (validated by the decorator).
    errors : str
        ``"fail"`` or ``"warn"``.
    base : str
        The tier's base directory (:func:`tier_base`).
    log : callable
        Where one-line status messages go.
    """

    def __init__(
        self,
        remote: CheckpointStore,
        *,
        mode: str = "each",
        errors: str = "fail",
        base: Optional[str] = None,
        log: Callable[[str], None] = print,
    ):
        self.remote = remote
        self.mode = mode
        self.errors = errors
        self.base = base or tempfile.gettempdir()
        self.log = log
        self._tier: Optional[CheckpointStore] = None
        self._records: Optional[status.UploadRecords] = None
        self.in_remote: set[str] = set()  # keys known to be in the flow's store
        self._warned = False
        self._tier_commits = 0  # saves this process committed into the tier
        self.chosen: list[str] = []  # the keys the end of the task chose to upload
        self._remote_headers: list[ManifestHeader] = []  # the task's, as the end listed them
        if mode == "end":
            self.open()  # now: a bad base fails the task at its start, before any save

    @property
    def at_end(self) -> bool:
        return self.mode == "end"

    @property
    def warn(self) -> bool:
        return self.errors == "warn"

    @property
    def root(self) -> str:
        """The tier's directory (whether or not it exists yet)."""
        return tiers.tier_root(self.remote.url, self.base)

    @property
    def tier(self) -> CheckpointStore:
        """The tier, opened (created) on first use: at start with ``upload="end"``, on the
        first failed commit with ``upload="each"`` and ``upload_errors="warn"``."""
        return self.open()[0]

    def open(self) -> tuple[CheckpointStore, status.UploadRecords]:
        """The tier and its status records (created if needed)."""
        if self._tier is None or self._records is None:
            self._tier = tiers.open_tier(self.remote, self.base)
            self._records = status.UploadRecords(self._tier.storage)
        return self._tier, self._records

    def existing_tier(self) -> Optional[CheckpointStore]:
        """The tier if it exists on this machine (never created here)."""
        if self._tier is None and not os.path.isdir(self.root):
            return None
        return self.tier

    @property
    def records(self) -> status.UploadRecords:
        return self.open()[1]

    def saves_store(self) -> CheckpointStore:
        """Where this process's saves commit."""
        return self.tier if self.at_end else self.remote

    def context(self) -> dict:
        """The ``TaskContext`` fields a subprocess needs to save as this task does."""
        return upload_fields(self.mode, self.errors, self.base)

    def metadata_value(self) -> str:
        """The value of the task's ``checkpoint-tier`` metadata."""
        return json.dumps({"host": socket.gethostname(), "path": self.root}, sort_keys=True)

    # ------------------------------------------------------------------ status
    def committed(self, store: CheckpointStore, key: str) -> str:
        """The status of a checkpoint this process just committed into ``store``."""
        if store is self.remote:
            self.in_remote.add(key)
            return status.UPLOADED
        self._tier_commits += 1
        if self._tier_commits == 1:  # a sweep leaves this task's checkpoints be while it lives
            self._hint(lambda: cleanup.mark_writer(store, key.rsplit("/", 1)[0] + "/"))
        return self.status_of(key)

    def status_of(self, key: str) -> str:
        """A checkpoint's status as a reader shows it (``upload_status.effective``).  Only a
        key known in the flow's store is ``uploaded``: a record saying so for a checkpoint the
        store lacks (deleted there since) reads ``local``, as ``client/tiers.py`` lists it."""
        if key in self.in_remote:
            return status.UPLOADED
        tier = self.existing_tier()
        return status.effective(self.records.get(key) if tier is not None else None)

    def _set(self, key: str, value: str, error: Optional[str] = None) -> None:
        self._hint(lambda: self.records.set(key, value, error), "%s %s" % (key, value))

    def _hint(self, write: Callable[[], None], what: str = "this task's writer") -> None:
        try:
            write()
        except (CheckpointException, OSError) as exc:  # a record is a hint, never the failure
            self.log("[@checkpoint] Warning: could not record %s: %s" % (what, exc))

    def failed_commit(self, error: BaseException) -> bool:
        """A commit to the flow's store failed after the bounded retries: True when the policy
        says to commit into the tier instead (``upload="each"``, ``upload_errors="warn"``)."""
        return self.warn and not self.at_end and isinstance(error, StorageError)

    def kept_locally(self, key: str, error: BaseException) -> None:
        """Record a checkpoint committed into the tier after its commit to the flow's store
        failed: status ``failed``, and one warning for the task (the first time)."""
        text = describe_error(error)
        self._set(key, status.FAILED, text)
        self._warn(key, text)

    def _warn(self, key: str, text: str) -> None:
        if self._warned:
            return
        self._warned = True
        self.log(
            "[@checkpoint] Warning: uploading checkpoint %s to %s failed after retries (%s); it "
            "is kept locally at %s with status 'failed' and training continues "
            "(upload_errors='warn'). Later failures are not logged again; the end of the task "
            "retries the newest latest=True checkpoint." % (key, self.remote.url, text, self.root)
        )

    # ------------------------------------------------------------------ the end of the task
    def upload(self, key: str, abort: Optional[tiers.Abort] = None) -> tiers.Uploaded:
        """Upload one tier checkpoint; its status goes ``uploading`` -> ``uploaded`` (or back
        to ``local`` when abandoned, ``failed`` when it failed); one log line when moved.

        Raises
        ------
        CheckpointException
            The upload's error (after the records say so).
        """
        self._set(key, status.UPLOADING)
        started = time.monotonic()
        try:
            done = tiers.upload(self.tier, self.remote, key, abort=abort)
        except tiers.UploadAbandoned:
            self._set(key, status.LOCAL)
            raise
        except CheckpointException as exc:
            self._set(key, status.FAILED, describe_error(exc))
            raise
        self._set(key, status.UPLOADED)
        self.in_remote.add(key)
        self.log(
            "[@checkpoint] Uploaded checkpoint %s to %s: %d bytes in %d blobs, %.2f s%s."
            % (
                key,
                self.remote.url,
                done.bytes,
                done.blobs,
                time.monotonic() - started,
                " (already there)" if done.already else "",
            )
        )
        return done

    def upload_at_end(
        self,
        scope: Scope,
        position: Position,
        retention: Optional[Retention],
        *,
        abort: Optional[tiers.Abort] = None,
        raise_errors: bool = False,
        hurry: bool = False,
    ) -> list[str]:
        """Upload what this attempt's end keeps (:func:`to_upload`); returns the keys now in
        the flow's store.  Nothing when nothing was saved into the tier.

        The task's checkpoints in the flow's store are listed first (one listing: the pick
        is among both), except with ``upload="end"`` after a signal (``hurry``): the time
        allowed is for the upload, which finds a key already there by itself.

        With ``raise_errors`` (``upload_errors="fail"`` and the step succeeded) the first
        failure is raised once the others were tried; otherwise each failure is logged (one
        warning with ``"warn"``) and the checkpoint stays in the tier, the log says where.

        Raises
        ------
        CheckpointException
            An upload failed, with ``raise_errors``.
        """
        tier = self.existing_tier()  # (opened at the start with upload='end')
        if tier is None:
            return []
        prefix = scope.task_prefix()
        try:
            # Every attempt's: a checkpoint an earlier attempt left local (its upload failed,
            # was abandoned after a signal, or killed) may be what this attempt resumed from.
            local = tier.headers(prefix)
        except CheckpointException as exc:
            if raise_errors:
                raise
            self.log("[@checkpoint] Could not list the local tier %s: %s" % (self.root, exc))
            return []
        if not local:
            return []
        try:
            if not (hurry and self.at_end):
                self._remote_headers = self.remote.headers(prefix)
                self.in_remote.update(h.key for h in self._remote_headers)
        except CheckpointException as exc:  # each upload still finds a key already there
            self.log("[@checkpoint] Could not list %s: %s" % (self.remote.url, exc))
        known = {h.key for h in local}
        headers = local + [h for h in self._remote_headers if h.key not in known]
        try:
            keys = to_upload(tier, headers, position, retention, self.in_remote)
        except CheckpointException as exc:
            if raise_errors:
                raise
            self.log("[@checkpoint] Could not list the local tier %s: %s" % (self.root, exc))
            return []
        keys = [k for k in keys if k in known]  # (the others are in the flow's store)
        self.chosen = keys
        done: list[str] = []
        first = None
        for key in keys:
            try:
                self.upload(key, abort)
                done.append(key)
            except tiers.UploadAbandoned as exc:
                self.log(
                    "[@checkpoint] Checkpoint %s stayed local at %s: %s"
                    % (key, self.root, exc.message)
                )
            except CheckpointException as exc:
                first = first or exc
                if self.warn:
                    self._warn(key, describe_error(exc))
                else:
                    self.log(
                        "[@checkpoint] Uploading checkpoint %s failed; it stays local at %s: %s"
                        % (key, self.root, describe_error(exc))
                    )
        if first is not None and raise_errors and not self.warn:
            raise first
        return done

    # ------------------------------------------------------------------ cleanup
    def on_commit(self, ref: Any, pruned: Sequence[str] = ()) -> None:
        """A ``TaskSaves`` listener: the upload records of the tier checkpoints retention just
        pruned go with them (best effort; the task's end removes any left)."""
        if not pruned or (self._tier is None and not self.at_end):
            return
        for key in pruned:
            try:
                self.records.delete(key)
            except (CheckpointException, OSError):
                pass  # a record is a hint; finish() removes orphans

    def sweep_at_start(self, days: float) -> None:
        """Remove tier checkpoints of any task older than ``days`` (their manifest file's age),
        except ``failed`` ones (one log line naming the tier), and records of checkpoints no
        longer there; then the blobs nothing references.  Never fails the task."""
        tier = self.existing_tier()  # (opened at the start with upload='end')
        if tier is None:
            return
        self._tidy(
            tier,
            lambda: cleanup.sweep(tier, days * 86400.0, moot=partial(moot_in, self.remote)),
            "older than %g days" % days,
        )

    def finish(
        self, scope: Scope, position: Position, *, succeeded: bool, pruned: bool, hurry: bool
    ) -> None:
        """The task's end, after its upload: when the step ``succeeded``, remove this writer's
        tier checkpoints (every attempt) that are confirmed in the flow's store, or superseded
        there (:func:`superseded`: a newer ``latest=True`` one of the same series is uploaded;
        a ``failed`` one too, it is moot), never one only the tier holds that a retry or a
        reference could still need; then the records of checkpoints gone from the tier and the
        tier's unreferenced blobs (also when retention may have ``pruned`` the tier).  Nothing
        after a signal (``hurry``: the time allowed is for the upload; a retry here loads the
        tier).  Never fails the task: one warning."""
        tier = self.existing_tier()  # (opened at the start with upload='end')
        if tier is None or hurry:
            return

        def clean() -> cleanup.Cleaned:
            done = cleanup.Cleaned()
            if succeeded:
                own = [h for h in tier.headers(scope.task_prefix()) if h.position == position]
                gone = superseded(own + self._remote_headers, self.in_remote)
                keys = [h.key for h in own if h.key in self.in_remote or h.key in gone]
                done = cleanup.remove(tier, keys, keep_failed=False)
            done.records += cleanup.orphan_records(tier, scope.task_prefix())
            cleanup.unmark_writer(tier, scope.task_prefix())
            return done

        self._tidy(tier, clean, "of this task", collect=pruned and self._tier_commits > 0)

    def _tidy(
        self,
        tier: CheckpointStore,
        clean: Callable[[], cleanup.Cleaned],
        what: str,
        collect: bool = False,
    ) -> None:
        try:
            done = clean()
            if done.tasks:
                self.log(
                    "[@checkpoint] Removed %d checkpoint(s) of %d task(s) %s from the local tier "
                    "%s (the oldest %.2f days old)."
                    % (len(done.removed), done.tasks, what, self.root, done.oldest / 86400.0)
                )
            if done.kept_failed:
                self.log(
                    "[@checkpoint] Kept %d checkpoint(s) whose upload failed in the local tier "
                    "%s (the only copy), e.g. %s; once no longer needed (e.g. a resume replaced "
                    "its run), delete its manifest file there (the next sweep removes the rest)."
                    % (len(done.kept_failed), self.root, done.kept_failed[0])
                )
            if done.anything or collect:
                cleanup.collect(tier)
        except CheckpointConfigError as exc:  # another task collects the tier right now
            self.log("[@checkpoint] Local tier %s not collected: %s" % (self.root, exc.message))
        except (CheckpointException, OSError) as exc:
            self.log(
                "[@checkpoint] Warning: cleaning the local tier %s (checkpoints %s) failed: %s"
                % (self.root, what, exc)
            )
