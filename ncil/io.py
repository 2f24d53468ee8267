"""The one module that reads and writes artifacts: YAML/JSON, NPY data, checkpoints, Parquet.

Every write goes to a temporary file in the destination folder and is renamed into place, so a
killed job never leaves a half-written file under the final name. Every read of an artifact turns
a corrupt or truncated file into an ``ArtifactError`` that names the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from io import BytesIO
from pathlib import Path

import numpy as np

CHECKPOINT_FORMAT = 2  # 2: content_sha256 and centers_sha256
CENTERS_FORMAT = 1
EVAL_FORMAT = 1
DATA_FORMAT = 1


class ArtifactError(RuntimeError):
    """An artifact is missing, corrupt, truncated or does not follow its contract."""


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def ensure_writable(*paths: str | Path) -> None:
    """Fail now, in one line naming the artifact, if an output cannot be created where it goes.

    Called by a stage before its long work (loading data, training), so a read-only folder or a
    missing permission costs seconds, not a training run. Creates the missing parent folders.
    """
    for path in paths:
        parent = Path(path).parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".probe", dir=parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise ArtifactError(f"{path}: cannot write here ({err.strerror or err})") from None


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _require(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: {what} not found")
    return path


# --- YAML and JSON -------------------------------------------------------------------------------


def read_yaml(path: str | Path) -> dict:
    import yaml

    path = _require(path, "YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ArtifactError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def write_yaml(path: str | Path, data: dict, header: str = "") -> None:
    import yaml

    write_text(path, header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100))


def dumps_json(data) -> str:
    """Canonical JSON text: sorted keys, two-space indent, trailing newline (byte-stable)."""
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n"


def write_json(path: str | Path, data) -> None:
    write_text(path, dumps_json(data))


def read_json(path: str | Path, what: str = "JSON file") -> dict:
    path = _require(path, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: corrupt or truncated {what} ({err})") from None


# --- Prepared data sets: NPY arrays plus a checksum manifest -----------------------------------


def write_array(path: str | Path, array: np.ndarray) -> None:
    """NPY format 1.0 (byte-stable: no timestamps, unlike ``np.savez``)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.lib.format.write_array(fh, np.ascontiguousarray(array), version=(1, 0), allow_pickle=False)


def write_array_chunks(path: str | Path, shape: tuple, dtype, chunks) -> None:
    """NPY 1.0 file of ``shape`` filled row block by row block from ``chunks`` (an iterable of arrays).

    Byte-identical to ``write_array`` of the concatenated rows, without holding them all in memory
    (ImageNet-Subset's training images are about 19 GB as uint8).
    """
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=tuple(shape), version=(1, 0))
        start = 0
        for chunk in chunks:
            out[start : start + len(chunk)] = chunk
            start += len(chunk)
        if start != shape[0]:
            raise ValueError(f"{path}: expected {shape[0]} rows, the chunks gave {start}")
        out.flush()
        del out


def read_array(path: str | Path, mmap: bool = False) -> np.ndarray:
    """An NPY array; ``mmap`` maps it read-only instead of reading it (rows load when indexed)."""
    path = _require(path, "array file")
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as err:
        raise ArtifactError(f"{path}: corrupt or truncated NPY array ({err})") from None


def write_manifest(path: str | Path, dataset: str, files: list[str | Path], extra: dict) -> None:
    """``manifest.json``: format version, data set name and the SHA-256 of every data file."""
    entries = {Path(f).name: {"sha256": sha256_file(f), "bytes": Path(f).stat().st_size} for f in files}
    write_json(path, {"format": "ncil-arrays", "format_version": DATA_FORMAT, "dataset": dataset,
                      "files": entries, **extra})


def verify_manifest(path: str | Path) -> dict:
    """Check every file listed in a manifest against its SHA-256; return the manifest."""
    manifest = read_json(path, "data manifest")
    if manifest.get("format") != "ncil-arrays" or manifest.get("format_version") != DATA_FORMAT:
        raise ArtifactError(
            f"{path}: format: expected ncil-arrays version {DATA_FORMAT}, got "
            f"{manifest.get('format')!r} version {manifest.get('format_version')!r}"
        )
    folder = Path(path).parent
    for name, entry in sorted(manifest.get("files", {}).items()):
        file = _require(folder / name, "data file listed in the manifest")
        found = sha256_file(file)
        if found != entry["sha256"]:
            raise ArtifactError(
                f"{file}: checksum mismatch (expected sha256 {entry['sha256']}, found {found}); "
                f"the file is corrupt or was changed: rerun the prepare step"
            )
    return manifest


# --- Checkpoints ---------------------------------------------------------------------------------


def content_digest(payload) -> str:
    """SHA-256 of a checkpoint payload's content: every tensor's dtype, shape and bytes, every value.

    Walks dicts in sorted key order, so the digest depends on what the checkpoint holds, not on how
    torch laid out its archive. A flipped byte inside a tensor changes it.
    """
    import torch

    digest = hashlib.sha256()

    def feed(value) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, dict):
            digest.update(b"D%d" % len(value))
            for key in sorted(value, key=str):
                digest.update(f"K{key!r}".encode())
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(b"L%d" % len(value))
            for item in value:
                feed(item)
        else:
            digest.update(f"V{type(value).__name__}:{value!r}".encode())

    feed(payload)
    return digest.hexdigest()


def save_checkpoint(path: str | Path, payload: dict, centers_file: str | Path | None = None) -> None:
    """A plain dict of tensors and primitives, loadable with ``torch.load(weights_only=True)``.

    The payload carries ``content_sha256`` (``content_digest`` of everything else), checked by
    ``load_checkpoint``; with ``centers_file`` it also records that file's SHA-256, so a checkpoint
    and a class-centers table from different runs or writes are never taken as one task's outputs.
    """
    import torch

    payload = {"format_version": CHECKPOINT_FORMAT, **payload}
    if centers_file is not None:
        payload["centers_sha256"] = sha256_file(centers_file)
    payload["content_sha256"] = content_digest(payload)
    buffer = BytesIO()  # saved in memory: torch names the archive after a file, and the temp name is random
    torch.save(payload, buffer)
    write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, centers_file: str | Path | None = None) -> dict:
    """Load and check a checkpoint: format, required keys, content hash (and its centers file's hash)."""
    import torch

    path = _require(path, "checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, zip errors...
        raise ArtifactError(f"{path}: corrupt or truncated checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or payload.get("format_version") != CHECKPOINT_FORMAT:
        found = payload.get("format_version") if isinstance(payload, dict) else type(payload).__name__
        raise ArtifactError(f"{path}: format_version: expected a checkpoint of format {CHECKPOINT_FORMAT}, "
                            f"found {found!r} (regenerate it with this version of ncil)")
    for key in ("task", "seen_classes", "model", "config", "content_sha256"):
        if key not in payload:
            raise ArtifactError(f"{path}: {key}: missing from the checkpoint")
    stored = payload.pop("content_sha256")
    if content_digest(payload) != stored:
        raise ArtifactError(f"{path}: content_sha256: the checkpoint's tensors or values do not match the hash "
                            "written with them (the file was modified or corrupted after it was saved)")
    if centers_file is not None:
        found = sha256_file(_require(centers_file, "class-centers table"))
        if payload.get("centers_sha256") != found:
            raise ArtifactError(f"{centers_file}: does not belong to {path} (the checkpoint records centers "
                                f"sha256 {payload.get('centers_sha256')}, the file hashes to {found}): "
                                "the two were not written by the same training job")
    return payload


# --- Parquet tables ------------------------------------------------------------------------------


def _write_table(path: str | Path, table) -> None:
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def _read_table(path: str | Path, what: str, required: dict):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = _require(path, what)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise ArtifactError(f"{path}: corrupt or truncated {what} ({err})") from None
    for name, type_check in required.items():
        if name not in table.column_names:
            raise ArtifactError(f"{path}: {name}: column missing from the {what}")
        if not type_check(table.schema.field(name).type):
            raise ArtifactError(f"{path}: {name}: unexpected column type {table.schema.field(name).type}")
    return table


def write_centers(path: str | Path, rows: dict, task: int, feature_dim: int) -> None:
    """Class centers (design.md 2): one row per class seen so far.

    ``rows`` holds equal-length sequences ``class_id``, ``original_class``, ``task``, ``n_samples``,
    ``spread`` (the class's mean per-dimension feature variance, trace(Sigma)/d, for PASS's radius)
    and ``center`` (an (n, feature_dim) float32 array).
    """
    import pyarrow as pa

    centers = np.asarray(rows["center"], dtype=np.float32)
    if centers.ndim != 2 or centers.shape[1] != feature_dim:
        raise ValueError(f"center: expected shape (n, {feature_dim}), got {centers.shape}")
    schema = pa.schema(
        [
            ("class_id", pa.int32()),
            ("original_class", pa.int32()),
            ("task", pa.int32()),
            ("n_samples", pa.int64()),
            ("spread", pa.float32()),
            ("center", pa.list_(pa.float32(), feature_dim)),
        ],
        metadata={
            "ncil.format_version": str(CENTERS_FORMAT),
            "ncil.task": str(task),
            "ncil.feature_dim": str(feature_dim),
        },
    )
    flat = pa.array(centers.reshape(-1), type=pa.float32())
    table = pa.table(
        [
            pa.array(rows["class_id"], type=pa.int32()),
            pa.array(rows["original_class"], type=pa.int32()),
            pa.array(rows["task"], type=pa.int32()),
            pa.array(rows["n_samples"], type=pa.int64()),
            pa.array(rows["spread"], type=pa.float32()),
            pa.FixedSizeListArray.from_arrays(flat, feature_dim),
        ],
        schema=schema,
    )
    _write_table(path, table)


def read_centers(path: str | Path) -> dict:
    """Class centers as numpy arrays, plus the producing task and the feature dim."""
    import pyarrow as pa

    table = _read_table(
        path,
        "class-centers table",
        {
            "class_id": pa.types.is_integer,
            "original_class": pa.types.is_integer,
            "task": pa.types.is_integer,
            "n_samples": pa.types.is_integer,
            "spread": pa.types.is_floating,
            "center": pa.types.is_fixed_size_list,
        },
    )
    meta = table.schema.metadata or {}
    try:
        dim = int(meta[b"ncil.feature_dim"])
        task = int(meta[b"ncil.task"])
    except (KeyError, ValueError):
        raise ArtifactError(f"{path}: ncil.feature_dim / ncil.task: missing from the schema metadata") from None
    center = table.column("center").combine_chunks()
    values = center.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return {
        "class_id": table.column("class_id").to_numpy(),
        "original_class": table.column("original_class").to_numpy(),
        "task": table.column("task").to_numpy(),
        "n_samples": table.column("n_samples").to_numpy(),
        "spread": table.column("spread").to_numpy().astype(np.float32),
        "center": values.reshape(len(table), dim),
        "producing_task": task,
        "feature_dim": dim,
    }


def write_predictions(path: str | Path, columns: dict, task: int) -> None:
    """Per-test-image predictions after task ``task`` (int columns, one row per image)."""
    import pyarrow as pa

    arrays = {name: pa.array(np.asarray(values), type=pa.int32()) for name, values in columns.items()}
    table = pa.table(arrays).replace_schema_metadata(
        {"ncil.format_version": str(EVAL_FORMAT), "ncil.task": str(task)}
    )
    _write_table(path, table)


def read_predictions(path: str | Path) -> dict:
    import pyarrow as pa

    names = ("sample", "label", "original_label", "label_task", "prediction")
    table = _read_table(path, "evaluation table", {n: pa.types.is_integer for n in names})
    meta = table.schema.metadata or {}
    if b"ncil.task" not in meta:
        raise ArtifactError(f"{path}: ncil.task: missing from the schema metadata")
    out = {n: table.column(n).to_numpy() for n in names}
    out["task"] = int(meta[b"ncil.task"])
    return out
