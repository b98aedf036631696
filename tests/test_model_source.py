"""Shipping the initial checkpoint to nodes that cannot see the driver's disk."""

import pytest

from rlsys.model_source import local_model_dir, pack

pytestmark = pytest.mark.slow


def test_packed_checkpoint_materialises_where_the_path_is_missing(ray_session, tmp_path):
    ray = ray_session
    assert pack(str(tmp_path)) == []  # one node: every actor reads the path itself
    packed = [ray.put({"config.json": b"{}", "sub/weights.bin": b"\x00\x01"})]
    local = local_model_dir(str(tmp_path / "not-on-this-node"), packed)
    assert open(f"{local}/config.json", "rb").read() == b"{}"
    assert open(f"{local}/sub/weights.bin", "rb").read() == b"\x00\x01"
    assert local_model_dir(str(tmp_path), packed) == str(tmp_path)  # present: used as is, nothing fetched


def test_missing_checkpoint_without_packed_files_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="storage every node mounts"):
        local_model_dir(str(tmp_path / "absent"), [])
