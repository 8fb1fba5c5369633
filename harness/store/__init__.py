"""The run folder: files written atomically (``files``), committed artifacts (``artifacts``) and
the one JSON record per finished cell (``records``).

Layout of ``RUN_DIR``::

    recipes/<recipe_hash>.yaml, plans/<recipe_hash>.json   every recipe run here and its task graph
    commands.log, run.log                                  command lines; progress of every run
    pretrained/<key>/   model.safetensors (+ .json sidecar)            committed by atomic rename
    adapted/<key>/      model.safetensors (+ sidecar), adapter files    committed by atomic rename
    work/<kind>/<key>/  resumable training state while a task runs (removed once it commits)
    scores/<cell_id>/   <benchmark>.csv per-image scores, samples/
    cells/<cell_id>.json  the record; a whole, parseable one means the cell is finished
"""

from harness.store.files import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    file_lock,
    file_sha256,
    load_weights,
    save_weights,
    sidecar,
    weights_ready,
)
from harness.store.records import RunStore, read_json

__all__ = ["RunStore", "atomic_torch_save", "atomic_write_bytes", "atomic_write_json", "file_lock", "file_sha256",
           "load_weights", "read_json", "save_weights", "sidecar", "weights_ready"]
