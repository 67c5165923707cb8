"""``uaap export`` end to end (run ids, files, --data, errors) and compression (prune, distill)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from uaap.cli import main
from uaap.config import RunConfig


@pytest.fixture(scope="module")
def trained():
    from edge import demo

    cnn = demo.train_torch("cnn", epochs=2)
    tree = demo.fit_estimator("decision_tree", "breast_cancer")
    return cnn, tree


@pytest.fixture
def runs(trained, uaap_home):
    """Two runs in a fresh workspace: a torch CNN on digits and a decision tree on breast_cancer."""
    from edge import demo
    from uaap import workspace

    (cnn, split), (tree, tsplit) = trained
    rd = workspace.run_dir("run-cnn")
    rd.write_config(RunConfig(dataset="digits", model="cnn"))
    demo.save_torch(rd.model_file, "cnn", cnn, split, "digits")
    rt = workspace.run_dir("run-tree")
    rt.write_config(RunConfig(dataset="breast_cancer"))
    demo.save_est(rt.path / "model.skops", "decision_tree", tree, tsplit, "breast_cancer")
    return rd, rt


def test_export_run_id_writes_verified_bundles(runs, capsys):
    rd, rt = runs
    assert main(["export", "run-tree", "--to", "onnx,tflite,c", "--zip"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "tflite (not applicable):" in out and "TFLite has no tree-ensemble ops" in out
    exports = rt.exports_dir
    assert sorted(p.name for p in exports.iterdir()) == ["c", "c.zip", "onnx", "onnx.zip"]
    for fmt in ("onnx", "c"):
        manifest = json.loads((exports / fmt / "manifest.json").read_text())
        assert manifest["format"] == fmt and manifest["parity"]["passed"]
        assert manifest["parity"]["rows"] == 114  # breast_cancer's whole test split (< 200 rows)
        assert manifest["model"]["family"] == "decision_tree"
        assert len(manifest["input"]["preprocessing"]["mean"]) == 30
        with zipfile.ZipFile(exports / f"{fmt}.zip") as zf:
            assert f"{fmt}/manifest.json" in zf.namelist()
    assert (exports / "c" / "model.h").read_text().count("#define UAAP_N_FEATURES 30") == 1


def test_export_model_file_with_data_file(runs, tmp_path):
    from uaap.data import load_split

    rd, _ = runs
    test = load_split(RunConfig(dataset="digits")).test
    frame = {f"p{i}": test.X[:, i] for i in range(test.n_features)} | {"digit": test.y}
    import pandas as pd

    pd.DataFrame(frame).to_csv(tmp_path / "rows.csv", index=False)
    out = tmp_path / "bundles"
    rc = main(
        [
            "export",
            str(rd.model_file),
            "--to",
            "onnx",
            "--data",
            str(tmp_path / "rows.csv"),
            "--target",
            "digit",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    manifest = json.loads((out / "onnx" / "manifest.json").read_text())
    assert manifest["parity"]["rows"] == 200 and manifest["input"]["feature_names"][0] == "p0"


def test_export_errors_name_the_problem(runs, capsys):
    assert main(["export", "run-cnn", "--to", "onnx,pdf"]) == 2
    assert "unknown format(s) ['pdf']" in capsys.readouterr().err
    assert main(["export", "no-such-run", "--to", "onnx"]) == 2
    assert "recent runs: run-cnn" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main(["export", "run-cnn", "--quantize", "int4"])
    assert refused.value.code == 2  # argparse's usage error, not a crash or a success
    assert "invalid choice: 'int4'" in capsys.readouterr().err
    assert main(["export", "run-tree", "--prune", "0.5"]) == 2
    assert "torch registry models" in capsys.readouterr().err


def test_prune_with_finetuning_and_distillation(runs):
    from edge import export_model
    from uaap.workspace import load_model

    rd, _ = runs
    pruned = export_model("run-cnn", "onnx,c", prune=0.5, finetune_epochs=1)
    assert [r.status for r in pruned] == ["ok", "ok"]
    info = pruned[0].manifest["compression"]["prune"]
    assert 0.49 <= info["sparsity"] <= 0.51
    assert pruned[0].path.name == "onnx-pruned50"
    model, _ = load_model(rd.exports_dir / "model-cnn-prune.npz")
    weights = np.concatenate([p.detach().numpy().ravel() for n, p in model.named_parameters() if "weight" in n])
    assert 0.49 <= float(np.mean(weights == 0)) <= 0.51

    distilled = export_model("run-cnn", "onnx", distill="logreg", distill_epochs=2, quantize="int8")
    (result,) = distilled
    assert result.status == "ok", result.reason
    info = result.manifest["compression"]["distill"]
    assert info["teacher"] == "cnn" and info["student"] == "logreg"
    assert result.manifest["model"]["family"] == "logreg"
    # compression accuracies are measured on the whole held-out split, like accuracy_source_full_heldout
    assert result.manifest["parity"]["accuracy_original_model_full_heldout"] == pytest.approx(info["accuracy_teacher"])
    assert result.manifest["parity"]["accuracy_source_full_heldout"] == pytest.approx(info["accuracy_student"])
    assert info["accuracy_student"] > 0.5
    teacher = json.loads((rd.exports_dir / "onnx-pruned50" / "manifest.json").read_text())
    assert result.manifest["size_bytes"] * 10 < teacher["size_bytes"]


def test_importing_the_exporter_stays_light():
    """TensorFlow (and the converters) load only inside export functions, never on import or --help."""
    import subprocess
    import sys

    code = (
        "import argparse, sys, edge, edge.commands as e;"
        "e.register_export(argparse.ArgumentParser().add_subparsers());"
        "heavy = [m for m in ('tensorflow', 'torch', 'coremltools', 'onnx', 'skl2onnx') if m in sys.modules];"
        "print(heavy); assert not heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- issue 24: verification rows stand for the whole held-out split, even when the table is sorted -----------


def _label_sorted_csv(path, X, y, target):
    """Write rows sorted by label, the way many real tables come."""
    import pandas as pd

    order = np.argsort(y, kind="stable")
    frame = pd.DataFrame(X[order], columns=[f"x{i}" for i in range(X.shape[1])])
    frame[target] = y[order]
    frame.to_csv(path, index=False)
    return path


def _train_and_export(csv, target, capsys, epochs):
    """``uaap train --data CSV --target COL --model logreg`` then ``uaap export RUN --to onnx,c``."""
    from uaap import workspace

    rc = main(["train", "--data", str(csv), "--target", target, "--model", "logreg", "--epochs", str(epochs)])
    out = capsys.readouterr().out
    assert rc == 0, out
    (run_id,) = workspace.list_runs()
    rd = workspace.existing_run(run_id)
    test_accuracy = rd.events("end")[-1]["central"]["accuracy"]
    assert f"accuracy {test_accuracy:.4f}" in out
    assert main(["export", run_id, "--to", "onnx,c"]) == 0, capsys.readouterr().out
    manifests = {fmt: json.loads((rd.exports_dir / fmt / "manifest.json").read_text()) for fmt in ("onnx", "c")}
    return rd, test_accuracy, manifests


def _assert_representative(par, budget=200):
    """Every class present, each within one row of its share of the held-out split."""
    counts, whole = np.asarray(par["parity_class_counts"]), np.asarray(par["heldout_class_counts"])
    assert par["rows"] == par["parity_rows"] == counts.sum() == min(budget, whole.sum())
    assert par["heldout_rows"] == whole.sum()
    assert np.all(counts[whole > 0] >= 1), f"a class of the held-out split is missing: {counts} of {whole}"
    assert np.all(np.abs(counts - par["rows"] * whole / whole.sum()) < 1), f"{counts} is not in proportion to {whole}"
    assert par["parity_seed"] == 0 and par["passed"]


@pytest.mark.slow
def test_export_of_a_label_sorted_table_verifies_every_class(uaap_home, tmp_path, capsys):
    rng = np.random.default_rng(24)
    y = np.repeat(np.array(["a", "b", "c"]), [600, 400, 200])  # 1,200 rows: 240 held out, over the 200 budget
    centers = rng.normal(0.0, 1.0, (3, 5))
    X = centers[np.searchsorted(["a", "b", "c"], y)] + rng.normal(0.0, 1.3, (len(y), 5))
    csv = _label_sorted_csv(tmp_path / "sorted.csv", X, y, "label")

    rd, test_accuracy, manifests = _train_and_export(csv, "label", capsys, epochs=5)
    assert 0.5 < test_accuracy < 0.95, "a model that errs, so the sample's accuracy can differ from the split's"
    for manifest in manifests.values():
        par = manifest["parity"]
        _assert_representative(par)
        assert par["heldout_class_counts"] == [120, 80, 40]
        assert par["parity_sampling"] == "seeded random sample, stratified by class"
        assert par["accuracy_source_full_heldout"] == pytest.approx(test_accuracy, abs=1e-12)
    assert manifests["onnx"]["parity"]["parity_class_counts"] == manifests["c"]["parity"]["parity_class_counts"]

    # --data/--target: a label-sorted verification file of raw held-out rows is sampled the same way
    from uaap.data.tables import read_config_table, split_rows

    cfg = rd.read_config()
    raw = read_config_table(cfg)
    heldout = raw.subset(split_rows(raw, cfg.test_fraction, cfg.seed, cfg.task)[1]).frame
    rows = tmp_path / "heldout.csv"
    heldout.sort_values("label", kind="stable").to_csv(rows, index=False)  # raw rows: the model's plan encodes them
    out = tmp_path / "bundles"
    assert (
        main(
            ["export", str(rd.model_file), "--to", "onnx", "--data", str(rows), "--target", "label", "--out", str(out)]
        )
        == 0
    )
    par = json.loads((out / "onnx" / "manifest.json").read_text())["parity"]
    _assert_representative(par)
    assert par["accuracy_source_full_heldout"] == pytest.approx(test_accuracy, abs=1e-12)


@pytest.mark.slow
def test_export_of_label_sorted_digits_samples_all_ten_classes(uaap_home, tmp_path, capsys):
    from sklearn.datasets import load_digits

    digits = load_digits()
    csv = _label_sorted_csv(tmp_path / "digits_sorted.csv", digits.data, digits.target, "digit")

    _, test_accuracy, manifests = _train_and_export(csv, "digit", capsys, epochs=10)
    for manifest in manifests.values():
        par = manifest["parity"]
        _assert_representative(par)
        assert par["heldout_rows"] == 360 and par["rows"] == 200 and len(par["parity_class_counts"]) == 10
        assert par["accuracy_source_full_heldout"] == pytest.approx(test_accuracy, abs=1e-12)
        assert abs(par["accuracy_source"] - par["accuracy_source_full_heldout"]) < 0.05
