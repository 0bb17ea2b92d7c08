"""Browse, load and upload checkpoints from outside a task: ``from metaflow import Checkpoint``.

Checkpoints of runs are found through Metaflow's own objects: a pathspec (``"Flow"``,
``"Flow/run"``, ``"Flow/run/step"``, ``"Flow/run/step/task"``) or a client object locates the
flow's checkpoint store (from the run's metadata) and only checkpoints of runs visible in the
current Metaflow namespace are listed (``namespace(None)`` lists all).  Named checkpoints saved
outside any task (``Checkpoint().save(path, name="resnet50")``) live in the store's library and
are addressed by name: a bare name resolves among the versions published from the current
namespace or promoted to it (:meth:`Checkpoint.promote`), ``name@<version>`` pins a version.

The class is assembled from one mixin per concern, so each part reads on its own and
``help(Checkpoint)`` still shows every method with its docstring: :mod:`.listing` (list, best),
:mod:`.single` (get, load, open), :mod:`.named` (save, promote, unpromote), :mod:`.lifecycle`
(delete, pin, unpin, prune, gc, du, verify, pause); :mod:`.base` holds construction and stores.
"""

from __future__ import annotations

from .lifecycle import Lifecycle
from .listing import ORDER_FIELDS, Listing, Where
from .named import Named
from .single import Single


class Checkpoint(Listing, Single, Named, Lifecycle):
    """Checkpoints of flows, runs, steps and tasks, and named checkpoints, from anywhere.

    Inside a ``@checkpoint`` task, and in any process it starts (``torchrun`` workers,
    ``subprocess`` children) or code without access to ``current`` (framework callbacks),
    ``Checkpoint()`` saves, lists and loads in that task's scope exactly as
    ``current.checkpoint`` does, and resolves references as the task does (``"last"``,
    ``"best:val_loss"``, names in the task's namespace).  Elsewhere (a notebook, a script) it
    browses runs and saves named checkpoints.

    Parameters
    ----------
    temp_dir_root : str, optional
        Parent of the directory ``init_dir=True`` creates (default: the task's
        ``temp_dir_root``, else the system temp dir).  The first positional argument, as in
        the reference extension; a URL here is refused, naming ``root=``.
    init_dir : bool
        Create a fresh empty :attr:`directory` for this object (removed by :meth:`close` or at
        the end of a ``with`` block).
    root : str, optional
        Keyword only.  Checkpoint store root (path or URL).  Default: the store a run's tasks
        recorded, else ``METAFLOW_CHECKPOINT_ROOT``, else ``<default datastore
        root>/mf.checkpointing``.  Giving a root inside a task makes this a plain client of
        that store.

    Examples
    --------
    In a subprocess of a ``@checkpoint`` task (e.g. rank 0 of ``torchrun``)::

        with Checkpoint(init_dir=True) as ckpt:
            torch.save(model.state_dict(), os.path.join(ckpt.directory, "model.pt"))
            ckpt.save(metadata={"step": step})
    """

    def __enter__(self) -> Checkpoint:
        return self


__all__ = ["ORDER_FIELDS", "Checkpoint", "Where"]
