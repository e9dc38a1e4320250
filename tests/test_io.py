"""landscape.io, the owner of how files are written: atomically (a reader never sees half a file, a failed
write leaves the old one), with the umask's permissions, JSON that survives tensors and non-finite numbers,
one-line errors for outputs that cannot be written, names that cannot lead out of their folder, and
landscape's mark on what it writes."""
import json
import math
import os
import stat

import numpy as np
import pytest
import torch

from landscape.errors import ConfigError, OutputError
from landscape.io import (atomic_torch_save, jsonable, lock_folder, read_json, safe_name, save_npz, write_csv,
                          write_json, write_text, written_by_landscape)


def test_json_round_trip_of_tensors_arrays_and_non_finite_numbers(tmp_path):
    obj = {"t": torch.tensor([1.0, 2.0]), "a": np.arange(3), "f": np.float32(0.5), "nan": math.nan,
           "inf": -math.inf, "dev": torch.device("cpu"), 1: (1, 2)}
    path = write_json(tmp_path / "r.json", obj)
    assert read_json(path) == {"t": [1.0, 2.0], "a": [0, 1, 2], "f": 0.5, "nan": None, "inf": "-inf",
                               "dev": "cpu", "1": [1, 2]}
    assert json.loads(path.read_text()) == jsonable(obj)    # strict JSON: no NaN token


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_text(tmp_path / "a.txt", "old")
    with pytest.raises(Exception):
        atomic_torch_save({"f": lambda: 0}, path)              # a lambda cannot be pickled: fails mid-write
    with pytest.raises(TypeError):
        write_json(path, {"x": object()})
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_written_files_follow_the_umask_and_missing_folders_are_made(tmp_path):
    old = os.umask(0o027)
    try:
        path = write_text(tmp_path / "new" / "deep" / "b.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_outputs_that_cannot_be_written_are_one_line_errors(tmp_path):
    (tmp_path / "f").write_text("a file")
    with pytest.raises(OutputError, match="it is a folder"):
        write_text(tmp_path, "x")
    with pytest.raises(OutputError):
        write_text(tmp_path / "f" / "inside.txt", "x")       # a parent that is a file
    if os.geteuid() != 0:                                     # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(OutputError, match="not writable"):
            write_text(ro / "x.txt", "x")


def test_csv_and_arrays_and_checkpoints(tmp_path):
    p = write_csv(tmp_path / "m.csv", [{"epoch": 1, "loss": 1 / 3}, {"epoch": 2, "acc": 0.5}])
    assert p.read_text().splitlines() == ["epoch,loss,acc", "1,0.333333,", "2,,0.5"]
    z = save_npz(tmp_path / "z.npz", a=[1, 2])
    assert np.load(z)["a"].tolist() == [1, 2]
    c = atomic_torch_save({"w": torch.ones(2)}, tmp_path / "c.pt")
    assert torch.equal(torch.load(c, weights_only=True)["w"], torch.ones(2))


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", ".hidden", "-flag", "tab\there"])
def test_names_that_would_lead_out_of_their_folder_are_refused(name):
    with pytest.raises(ConfigError, match="not a plain name"):
        safe_name(name)
    assert safe_name("at-digits-eps0.1-s0") == "at-digits-eps0.1-s0"


def test_a_folder_has_one_writer_at_a_time(tmp_path):
    with lock_folder(tmp_path / "run", command="first"):
        with pytest.raises(Exception, match="first"):         # the holder's command is named
            with lock_folder(tmp_path / "run", command="second"):
                pass
    with lock_folder(tmp_path / "run"):                       # released: free again
        pass


def test_landscape_knows_its_own_files(tmp_path):
    ours = write_json(tmp_path / "ours.json", {"landscape_version": "0.1.0", "x": 1})
    theirs = write_text(tmp_path / "theirs.json", '{"x": 1}')
    assert written_by_landscape(ours) and not written_by_landscape(theirs)
    assert not written_by_landscape(tmp_path / "missing.json")
