"""Edge exporter: every family x format against its source framework on held-out rows (real runtimes)."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from edge import bundle, c_export, coreml_export, trees, verify
from edge.pipeline import export_one
from edge.source import load_source

TORCH = ("logreg", "svm", "mlp", "cnn")
ESTIMATORS = ("logistic_regression", "decision_tree", "random_forest", "xgboost")
TREES = ("decision_tree", "random_forest", "xgboost", "xgboost_bc")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Small trained models saved the way UAAP saves them, loaded back as export sources."""
    from edge import demo

    folder = tmp_path_factory.mktemp("edge_models")
    out = {}
    for name in TORCH:
        model, split = demo.train_torch(name, epochs=2)
        out[name] = load_source(demo.save_torch(folder / f"{name}.npz", name, model, split, "digits"))
    for family in ESTIMATORS:
        est, split = demo.fit_estimator(family, "digits")
        out[family] = load_source(demo.save_est(folder / f"{family}.skops", family, est, split, "digits"))
    for family in ("logistic_regression", "xgboost"):
        est, split = demo.fit_estimator(family, "breast_cancer")
        path = demo.save_est(folder / f"{family}_bc.skops", family, est, split, "breast_cancer")
        out[f"{family}_bc"] = load_source(path)
    return out


def _check_fp32(result, source):
    assert result.status == "ok", result.reason
    par = result.manifest["parity"]
    assert par["rows"] == min(200, len(source.heldout.y)) and par["rows"] >= 100
    assert par["max_abs_diff"] <= 1e-5
    assert par["argmax_agreement"] == 1.0
    assert bundle.verify_files(result.path) == []
    return par


@pytest.mark.parametrize("name", [*TORCH, *ESTIMATORS, "logistic_regression_bc", "xgboost_bc"])
def test_onnx_c_and_coreml_trees_match_the_source_model(sources, name, tmp_path):
    source = sources[name]
    formats = ("onnx", "c", "coreml") if name in TREES else ("onnx", "c")
    for fmt in formats:
        result = export_one(source, fmt, tmp_path)
        _check_fp32(result, source)
        manifest = json.loads((result.path / "manifest.json").read_text())
        assert manifest["input"]["shape"] == [None, source.n_features]
        assert manifest["output"]["shape"] == [None, source.n_classes]
        assert manifest["input"]["preprocessing"]["kind"] == "standardize"


@pytest.mark.parametrize("name", [*TORCH, "logistic_regression_bc"])
def test_tflite_and_coreml_match_the_source_model(sources, name, tmp_path):
    source = sources[name]
    for fmt in ("tflite", "coreml"):
        _check_fp32(export_one(source, fmt, tmp_path), source)


@pytest.mark.parametrize("fmt", ["onnx", "tflite", "coreml"])
@pytest.mark.parametrize("quantize", ["fp16", "int8"])
def test_quantized_exports_keep_the_predictions(sources, fmt, quantize, tmp_path):
    source = sources["cnn"]
    fp32 = export_one(source, fmt, tmp_path / "fp32")
    result = export_one(source, fmt, tmp_path, quantize=quantize)
    assert result.status == "ok", result.reason
    par = result.manifest["parity"]
    assert par["argmax_agreement"] >= 0.99
    assert abs(par["accuracy_change"]) <= 0.02
    assert 0 < par["max_abs_diff"] < 0.1  # really reduced precision, still close
    assert result.manifest["size_bytes"] < 0.7 * fp32.manifest["size_bytes"]
    assert result.path.name == f"{fmt}-{quantize}"


@pytest.mark.parametrize("quantize", ["fp16", "int8"])
def test_linear_estimator_quantizes_through_plain_onnx(sources, quantize, tmp_path):
    result = export_one(sources["logistic_regression"], "onnx", tmp_path, quantize=quantize)
    assert result.status == "ok", result.reason
    assert result.manifest["parity"]["argmax_agreement"] >= 0.99


def test_trees_are_refused_where_the_format_has_no_form(sources, tmp_path):
    result = export_one(sources["random_forest"], "tflite", tmp_path)
    assert result.status == "not applicable" and "random_forest" in result.reason
    assert export_one(sources["xgboost"], "coreml", tmp_path, quantize="int8").status == "not applicable"
    assert export_one(sources["mlp"], "c", tmp_path, quantize="int8").status == "not applicable"
    assert not any(p.name.startswith("tflite") for p in tmp_path.iterdir())


def test_tree_splits_match_sklearn_exactly_at_thresholds(sources, tmp_path):
    """Rows placed exactly on (and one float32 step around) every split: C must follow sklearn's ``<=``."""
    for name in ("decision_tree", "random_forest", "xgboost"):
        source = sources[name]
        est = source.model
        ens = trees.ensemble(est, name, source.heldout.X)
        base = source.heldout.X[:40].copy()
        rows = []
        tree = ens.trees[0]
        inner = np.flatnonzero(tree.feature >= 0)[:20]
        if name == "xgboost":
            cuts = tree.threshold[inner]
        else:
            cuts = est.estimators_[0].tree_.threshold[inner] if name == "random_forest" else est.tree_.threshold[inner]
            cuts = np.asarray(cuts, dtype=np.float64).astype(np.float32)  # nearest float32 to a float64 split
        for i, (node, cut) in enumerate(zip(inner, cuts, strict=True)):
            for value in (np.nextafter(cut, -np.inf), cut, np.nextafter(cut, np.inf)):
                row = base[i % len(base)].copy()
                row[tree.feature[node]] = value
                rows.append(row)
        X = np.asarray(rows, dtype=np.float32)
        ref = est.predict_proba(X)
        np.testing.assert_allclose(ens.predict_proba(X), ref, atol=1e-6)
        folder = tmp_path / name
        c_export.write(folder, *c_export.emit_ensemble(ens, name))
        got, _ = c_export.run_harness(c_export.compile_harness(folder, tmp_path / f"{name}-work"), X, source.n_classes)
        np.testing.assert_allclose(got, ref, atol=1e-5)
        assert (got.argmax(axis=1) == ref.argmax(axis=1)).all()


def test_strict_threshold_is_equivalent_to_sklearn_comparison():
    rng = np.random.default_rng(0)
    t = rng.normal(size=2000)
    s = trees.strict_threshold(t)
    for x in (
        t.astype(np.float32),
        np.nextafter(t.astype(np.float32), np.float32(np.inf)),
        np.nextafter(t.astype(np.float32), np.float32(-np.inf)),
    ):
        assert np.array_equal(x < s, x.astype(np.float64) <= t)


def test_decision_tree_in_c_fits_a_microcontroller(sources, tmp_path):
    result = export_one(sources["decision_tree"], "c", tmp_path)
    fp = result.manifest["footprint"]
    assert fp["ram_bytes"] < 1024, fp
    assert fp["data_bytes"] == 0 and fp["bss_bytes"] == 0  # all tables are const (flash)
    assert 0 < fp["flash_bytes"] < 4096
    # independent look at the object: nothing writable
    obj = tmp_path / "dt.o"
    subprocess.run(["gcc", "-Os", "-c", str(result.path / "model.c"), "-o", str(obj)], check=True)
    sizes = subprocess.run(["size", str(obj)], capture_output=True, text=True, check=True).stdout.splitlines()[1]
    text, data, bss = (int(v) for v in sizes.split()[:3])
    assert data + bss == 0 and text > 0


def test_verification_catches_a_wrong_export(sources, tmp_path):
    """A single changed weight in the generated C, or in the Core ML blob, must fail parity."""
    source = sources["mlp"]
    result = export_one(source, "c", tmp_path)
    code = (result.path / "model.c").read_text()
    table = code.rindex("static const float B")  # the output layer's bias: shifts one class for every row
    start = table + code[table:].index("{") + 1
    end = code.index(",", start)
    (result.path / "model.c").write_text(code[:start] + " 25.0f" + code[end:])
    got = verify.run("c", result.path, source.heldout.X, source.n_classes, tmp_path / "work")
    assert not verify.passes(verify.parity(source.predict_proba(source.heldout.X), got, source.heldout.y), False)[0]
    assert bundle.verify_files(result.path) == ["model.c"]

    result = export_one(source, "coreml", tmp_path)
    blob = result.path / coreml_export.PACKAGE / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    raw = bytearray(blob.read_bytes())
    at = (len(raw) // 4) & ~3  # inside the first weight matrix
    raw[at : at + 32] = np.full(8, 9.0, dtype=np.float32).tobytes()
    blob.write_bytes(bytes(raw))
    got = coreml_export.predict(result.path / coreml_export.PACKAGE, source.heldout.X)
    assert np.abs(got - source.predict_proba(source.heldout.X)).max() > 1e-3


def test_coreml_structure_check_names_the_defect(sources, tmp_path):
    result = export_one(sources["logreg"], "coreml", tmp_path)
    pkg = result.path / coreml_export.PACKAGE
    assert result.manifest["coreml"]["ops"]["linear"] == 1
    with pytest.raises(Exception, match="input shape"):
        coreml_export.check_structure(pkg, sources["logreg"].n_features + 1, 10)


@pytest.mark.parametrize("name", ["mlp", "logreg"])
@pytest.mark.parametrize("quantize", ["fp16", "int8"])
def test_quantized_mlp_and_logistic_regression_keep_the_predictions(sources, name, quantize, tmp_path):
    source = sources[name]
    fp32 = export_one(source, "onnx", tmp_path / "fp32")
    result = export_one(source, "onnx", tmp_path, quantize=quantize)
    assert result.status == "ok", result.reason
    par = result.manifest["parity"]
    assert par["argmax_agreement"] >= 0.97 and abs(par["accuracy_change"]) <= 0.03
    assert 0 < par["max_abs_diff"] < 0.1  # really reduced precision, still close
    assert result.manifest["size_bytes"] < fp32.manifest["size_bytes"]


def test_extra_trees_export_matches_scikit_learn(tmp_path):
    from sklearn.ensemble import ExtraTreesClassifier

    from edge import demo
    from uaap.config import RunConfig
    from uaap.data import load_split

    split = load_split(RunConfig(dataset="digits"))
    est = ExtraTreesClassifier(n_estimators=10, max_depth=6, random_state=0, n_jobs=1).fit(split.train.X, split.train.y)
    source = load_source(demo.save_est(tmp_path / "extra_trees.skops", "extra_trees", est, split, "digits"))
    assert source.family == "extra_trees"
    for fmt in ("onnx", "c", "coreml"):
        par = _check_fp32(export_one(source, fmt, tmp_path / fmt), source)
        assert par["accuracy_source"] == pytest.approx(
            float((est.predict(source.heldout.X) == source.heldout.y).mean())
        )
