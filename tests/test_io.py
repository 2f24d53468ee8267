import numpy as np
import pytest
import torch

from ncil.pipeline import io


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_previous_content_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    io.write_text(target, "complete")
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert target.read_text() == "complete"


def _checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    io.save_checkpoint(path, {"task": 0, "seen_classes": [3, 1], "config": {"a": 1},
                              "model": {"w": torch.arange(6.0).view(2, 3)}})
    return path


def test_checkpoint_roundtrip_is_weights_only(tmp_path):
    path = _checkpoint(tmp_path)
    plain = torch.load(path, weights_only=True)
    assert plain["seen_classes"] == [3, 1]
    assert torch.equal(io.load_checkpoint(path)["model"]["w"], torch.arange(6.0).view(2, 3))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_names_the_file(tmp_path, damage):
    path = _checkpoint(tmp_path)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a zip" * 10, "empty": b""}[damage])
    with pytest.raises(io.ArtifactError, match=f"{path}: corrupt or truncated checkpoint"):
        io.load_checkpoint(path)


def test_flipped_tensor_byte_fails_the_content_hash(tmp_path):
    path = _checkpoint(tmp_path)
    data = bytearray(path.read_bytes())
    # The weight tensor's storage: 6 float32 values 0..5; flip one bit of the value 5.0 (0x40a00000).
    at = bytes(data).index(np.arange(6, dtype=np.float32).tobytes())
    data[at + 5 * 4] ^= 0x01
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=True)["model"]["w"][1, 2].item() != 5.0  # torch itself loads it
    with pytest.raises(io.ArtifactError, match=f"{path}: content_sha256: .*modified or corrupted"):
        io.load_checkpoint(path)


def test_content_digest_sees_values_dtypes_and_shapes():
    base = {"model": {"w": torch.zeros(2, 3)}, "task": 1}
    same = {"task": 1, "model": {"w": torch.zeros(2, 3)}}
    assert io.content_digest(base) == io.content_digest(same)  # key order does not matter
    for other in ({"model": {"w": torch.zeros(3, 2)}, "task": 1}, {"model": {"w": torch.zeros(2, 3, dtype=torch.float64)}, "task": 1},
                  {"model": {"w": torch.zeros(2, 3)}, "task": 2}, {"model": {"w": torch.zeros(2, 3)}, "task": "1"}):
        assert io.content_digest(other) != io.content_digest(base)


def test_checkpoint_refuses_centers_of_another_write(tmp_path):
    centers = tmp_path / "centers.parquet"
    rows = {"class_id": [0], "original_class": [7], "task": [0], "n_samples": [3], "spread": [0.5],
            "center": np.ones((1, 2), np.float32)}
    io.write_centers(centers, rows, task=0, feature_dim=2)
    path = tmp_path / "model.pt"
    io.save_checkpoint(path, {"task": 0, "seen_classes": [7], "config": {}, "model": {}}, centers_file=centers)
    assert io.load_checkpoint(path, centers)["centers_sha256"] == io.sha256_file(centers)
    io.write_centers(centers, {**rows, "n_samples": [4]}, task=0, feature_dim=2)  # a later, different write
    with pytest.raises(io.ArtifactError, match=f"{centers}: does not belong to {path}"):
        io.load_checkpoint(path, centers)


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(io.ArtifactError, match="nope.pt: checkpoint not found"):
        io.load_checkpoint(tmp_path / "nope.pt")


def _centers(tmp_path):
    path = tmp_path / "centers.parquet"
    rows = {"class_id": [0, 1], "original_class": [7, 2], "task": [0, 0], "n_samples": [10, 12],
            "spread": [0.5, 0.25], "center": np.arange(8, dtype=np.float32).reshape(2, 4)}
    io.write_centers(path, rows, task=0, feature_dim=4)
    return path


def test_centers_schema_roundtrip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = _centers(tmp_path)
    schema = pq.read_schema(path)
    assert schema.field("center").type == pa.list_(pa.float32(), 4)
    assert schema.metadata[b"ncil.task"] == b"0" and schema.metadata[b"ncil.feature_dim"] == b"4"
    back = io.read_centers(path)
    assert back["original_class"].tolist() == [7, 2]
    assert np.array_equal(back["center"], np.arange(8, dtype=np.float32).reshape(2, 4))


def test_truncated_parquet_names_the_file(tmp_path):
    path = _centers(tmp_path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(io.ArtifactError, match=f"{path}: corrupt or truncated class-centers table"):
        io.read_centers(path)


def test_parquet_missing_column_is_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "centers.parquet"
    pq.write_table(pa.table({"class_id": [0]}), path)
    with pytest.raises(io.ArtifactError, match="original_class: column missing"):
        io.read_centers(path)


def test_manifest_detects_a_changed_data_file(tmp_path):
    arr = tmp_path / "train_images.npy"
    io.write_array(arr, np.zeros((2, 8, 8, 1), np.uint8))
    io.write_manifest(tmp_path / "manifest.json", "digits", [arr], {})
    io.verify_manifest(tmp_path / "manifest.json")
    data = bytearray(arr.read_bytes())
    data[-1] ^= 1
    arr.write_bytes(bytes(data))
    with pytest.raises(io.ArtifactError, match=f"{arr}: checksum mismatch"):
        io.verify_manifest(tmp_path / "manifest.json")


def test_truncated_array_names_the_file(tmp_path):
    arr = tmp_path / "x.npy"
    io.write_array(arr, np.zeros((100, 8), np.int64))
    arr.write_bytes(arr.read_bytes()[:200])
    with pytest.raises(io.ArtifactError, match=f"{arr}: corrupt or truncated NPY array"):
        io.read_array(arr)


def test_array_files_are_byte_stable(tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    io.write_array(a, np.arange(10))
    io.write_array(b, np.arange(10))
    assert a.read_bytes() == b.read_bytes()


def test_a_folder_given_for_a_file_is_named_a_folder(tmp_path):
    """``--params DIR`` said "YAML file not found" of a folder that is plainly there."""
    with pytest.raises(io.ArtifactError, match=r": a folder, expected a YAML file$"):
        io.read_yaml(tmp_path)
    with pytest.raises(io.ArtifactError, match=r"missing\.yaml: YAML file not found$"):
        io.read_yaml(tmp_path / "missing.yaml")
