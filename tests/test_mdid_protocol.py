"""``mccl mdid protocol``: the MDID splits through the real steps in one command, then mean +- std.

The fast tests check the argument and params handling; the slow one runs two split indices of
the tiny MDID fixture (``tests/test_mdid_e2e.py``) end to end through the command and checks that
its summary is the evaluate step's own per-split accuracy.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import yaml
from test_mdid_e2e import mdid_params, write_mdid_dataset

from mccl_core.cli import main as mccl_main
from mccl_core.config import ConfigError
from mccl_core.steps.mdid_protocol import mdid_params as adjusted_params
from mccl_core.steps.mdid_protocol import parse_splits


def test_splits_and_params_are_checked_at_the_door(tmp_path, capsys, caplog):
    assert parse_splits("0,1") == (0, 1) and parse_splits("4") == (4,)
    for bad in ("0,0", "5", "a", ""):
        with pytest.raises(ConfigError, match="--splits"):
            parse_splits(bad)

    params = mdid_params(tmp_path / "images", tmp_path / "splits.json", 0)
    params["model"]["pki"]["use_gcn"] = True  # as the default params.yaml has it
    with caplog.at_level(logging.WARNING):
        fixed, notes = adjusted_params(params)
    assert fixed["model"]["pki"]["use_gcn"] is False and params["model"]["pki"]["use_gcn"] is True  # a copy
    assert len(notes) == 1 and "model.pki.use_gcn: false" in caplog.text and "single-label" in caplog.text
    del params["model"]["pki"]["use_gcn"]  # the library default is on: set off too
    assert adjusted_params(params)[0]["model"]["pki"]["use_gcn"] is False
    assert adjusted_params(fixed)[1] == ()  # already off: nothing to say

    demo = tmp_path / "demo.yaml"
    demo.write_text(yaml.safe_dump({"data": {"source": "demo", "root": "data/demo"}}))
    assert mccl_main(["mdid", "protocol", "--params", str(demo), "--out", str(tmp_path / "o"), "--no-tracking"]) == 1
    assert f"{demo}: data.source is 'demo'; the MDID protocol needs data.source: mdid" in capsys.readouterr().err
    assert mccl_main(["mdid"]) == 2 and "mccl mdid protocol" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mccl_main(["mdid", "protocol", "--splits", "7"])
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_the_command_runs_each_split_through_the_steps_and_summarises(tmp_path, capsys, caplog):
    images, splits_file, post_ids = write_mdid_dataset(tmp_path / "mdid")
    params = mdid_params(images, splits_file, 3)  # the command sets each split index itself
    params["model"]["pki"]["use_gcn"] = True
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        code = mccl_main(["mdid", "protocol", "--params", str(tmp_path / "params.yaml"), "--out", str(out),
                          "--splits", "0,1", "--no-tracking"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "set model.pki.use_gcn: false" in caplog.text

    document = json.loads((out / "mdid_protocol.json").read_text())
    assert document["split_indices"] == [0, 1] and document["partial"] is True
    assert document["adjustments"] and "use_gcn" in document["adjustments"][0]
    per_split = []
    for k in (0, 1):
        metrics = json.loads((out / f"split{k}" / "evaluate" / "metrics.json").read_text())
        per_split.append(metrics["val_accuracy"])
        validated = json.loads((out / f"split{k}" / "validate" / "validated_data.json").read_text())
        assert validated["counts"]["per_split"] == {"train": 28, "val": 7}
        val_ids = np.load(out / f"split{k}" / "evaluate" / "predictions" / "val.npz")["image_ids"].tolist()
        assert sorted(val_ids) == sorted(post_ids[7 * k : 7 * k + 7])  # split k's own val fold
    assert document["per_split"] == pytest.approx(per_split, abs=1e-12)
    assert document["mean"] == pytest.approx(np.mean(per_split), abs=1e-12)
    assert document["std"] == pytest.approx(np.std(per_split), abs=1e-12)
    table = (out / "mdid_protocol.md").read_text()
    assert "partial" in table and f"**{100 * document['mean']:.2f} +- {100 * document['std']:.2f}**" in table
    assert table in capsys.readouterr().out
