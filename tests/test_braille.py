"""The Braille loader: restricted unpickling, validation, lookup, split, encoding (data tests skip without data)."""
import gzip
import io
import os
import pickle

import numpy as np
import pytest
import torch

from snn2hw.models import braille as B


def _write(path, obj):
    with gzip.open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


def _records(n_per_letter=5, steps=20):
    rng = np.random.default_rng(0)
    return [{"letter": letter, "repetition": r, "experiment_name": "x",
             "taxel_data": rng.uniform(60, 255, size=(steps, 12))}
            for letter in B.LETTERS for r in range(n_per_letter)]


class _Boom:
    """Unpickling this calls os.system: what plain pickle.load would run from a hostile file."""

    def __reduce__(self):
        return (os.system, ("touch BOOM_SHOULD_NOT_EXIST",))


def test_refuses_foreign_globals(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path / "evil.pkl.gz", [{"letter": "A", "taxel_data": _Boom()}])
    with pytest.raises(B.BrailleDataError, match="refusing to load global"):
        B.read_recordings(path)
    assert not (tmp_path / "BOOM_SHOULD_NOT_EXIST").exists()
    # the allowed globals are exactly what numpy arrays need
    raw = pickle.dumps(np.zeros((2, 12)))
    assert B._NumpyOnlyUnpickler(io.BytesIO(raw)).load().shape == (2, 12)
    with pytest.raises(pickle.UnpicklingError):
        B._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(torch.zeros(2)))).load()


def test_validates_structure_and_size(tmp_path, monkeypatch):
    good = _records(1)
    assert len(B.read_recordings(_write(tmp_path / "ok.pkl.gz", good))) == 27
    bad = [
        ({"not": "a list"}, "list"),
        ([{"letter": "A"}], "taxel_data"),
        ([{"letter": "?", "taxel_data": np.zeros((5, 12))}], "letter"),
        ([{"letter": "A", "taxel_data": np.zeros((5, 11))}], "taxel_data"),
        ([{"letter": "A", "taxel_data": np.full((5, 12), np.nan)}], "taxel_data"),
    ]
    for i, (obj, msg) in enumerate(bad):
        with pytest.raises(B.BrailleDataError, match=msg):
            B.read_recordings(_write(tmp_path / f"bad{i}.pkl.gz", obj))
    monkeypatch.setattr(B, "MAX_DECOMPRESSED_BYTES", 1000)
    with pytest.raises(B.BrailleDataError, match="decompresses"):
        B.read_recordings(tmp_path / "ok.pkl.gz")


def test_lookup_order_and_clear_error(tmp_path, monkeypatch):
    folder = tmp_path / "d"
    folder.mkdir()
    f = _write(folder / B.FILENAME, _records(1))
    assert B.find_data(folder) == f and B.find_data(f) == f
    monkeypatch.setenv(B.ENV_VAR, str(folder))
    assert B.find_data() == f
    monkeypatch.setenv(B.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        B.find_data()


def test_split_and_encoding_on_synthetic_records():
    recs = _records(10)
    tr, te = B.split_indices(recs)
    assert len(tr) == 27 * 8 and len(te) == 27 * 2 and not set(tr) & set(te)
    assert all(sum(recs[i]["letter"] == letter for i in te) == 2 for letter in B.LETTERS)
    tr2, _ = B.split_indices(recs)
    assert np.array_equal(tr, tr2)
    x = B.encode(recs[:3], steps=40, threshold=2.0)
    assert x.shape == (3, 40, 24) and set(x.unique().tolist()) <= {0.0, 1.0}


@pytest.fixture(scope="module")
def real():
    try:
        path = B.find_data()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return B.read_recordings(path)


def test_real_data_split(real):
    assert len(real) == 1350
    tr, te = B.split_indices(real)
    assert len(tr) == 1080 and len(te) == 270
    for letter in B.LETTERS:
        assert sum(real[i]["letter"] == letter for i in te) == 10
    # repetitions are disjoint per letter
    keys = lambda idx: {(real[i]["letter"], real[i]["repetition"]) for i in idx}  # noqa: E731
    assert not keys(tr) & keys(te)


def test_real_data_encodes_and_learns(real):
    from snn2hw.train.trainer import Trainer

    tr, te = B.split_indices(real)
    sub = [real[i] for i in tr if real[i]["letter"] in ("A", "B", "C", "D")]
    x, y = B.encode(sub, steps=64), B.labels(sub)
    assert x.shape == (160, 64, 24) and 0.01 < x.mean() < 0.2
    model = B.build_model(hidden=32)
    cfg = B.train_config(epochs=3, progress=False, batch_size=32)
    h = Trainer(model, cfg, loss_fn=B.loss_fn).fit((x, y))
    assert h[-1]["loss"] < h[0]["loss"]


def test_real_data_float_qat_deploy_chain_is_exact(real):
    """Recurrent network: float training, QAT fine-tuning, compile + simulator: QAT == deployed predictions."""
    torch.set_num_threads(2)
    tr, te = B.split_indices(real)
    letters = ("A", "B", "C", "D", "E")
    pick = lambda idx: [real[i] for i in idx if real[i]["letter"] in letters]  # noqa: E731
    rec_tr, rec_te = pick(tr), pick(te)
    x_tr, y_tr = B.encode(rec_tr, steps=64), B.labels(rec_tr)
    x_te, y_te = B.encode(rec_te, steps=64), B.labels(rec_te)
    model = B.build_model(hidden=32)
    from snn2hw.nn.layers import RecurrentLIFDense
    from snn2hw.train.trainer import Trainer

    assert isinstance(model.layers[0], RecurrentLIFDense)
    Trainer(model, B.train_config(epochs=2, progress=False), loss_fn=B.loss_fn).fit((x_tr, y_tr))
    res = B.float_qat_deploy(model, (x_tr, y_tr), (x_te, y_te), qat_epochs=1)
    assert res["qat_deployed_prediction_mismatches"] == 0
    assert res["qat_accuracy"] == res["deployed_accuracy"]
    assert torch.equal(B.predict(model, x_te), B.deployed_predict(model, x_te))


def test_module_trains_with_another_rule_and_deploys(tmp_path, monkeypatch):
    """`python -m snn2hw.models.braille --rule eprop --rule-options ...`: the module's recipe with an online
    rule, deployed on the simulator; synthetic recordings stand in for the data file."""
    import json

    recs = _records(n_per_letter=2, steps=12)
    x, y = B.encode(recs, steps=16), B.labels(recs)
    monkeypatch.setattr(B, "load", lambda *a, **k: (x, y, x[:27], y[:27]))
    out = tmp_path / "run"
    assert B.main(["--epochs", "1", "--qat-epochs", "0", "--hidden", "8", "--threads", "1", "--rule", "eprop",
                   "--rule-options", '{"rate_target": 0.05}', "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["rule"] == "eprop" and res["rule_options"] == {"rate_target": 0.05}
    assert 0.0 <= res["deployed_accuracy"] <= 1.0 and len(res["epoch_time_s"]) == 1


def test_validation_mode_holds_out_a_stratified_fifth_and_never_reads_test(tmp_path, monkeypatch):
    """`--validation` (choosing hyper-parameters): trains on 4/5 of each letter's training recordings, evaluates
    float and deployed accuracy on the rest, applies the recipe overrides, and never touches the test set
    (here test inputs of the wrong width, which any evaluation would reject)."""
    import csv
    import json

    recs = _records(n_per_letter=5, steps=12)
    x, y = B.encode(recs, steps=16), B.labels(recs)
    tr, va = B.validation_split(y)
    assert len(va) == 27 and not set(tr.tolist()) & set(va.tolist()) and len(tr) + len(va) == len(y)
    assert sorted(y[va].tolist()) == list(range(27))
    assert torch.equal(B.validation_split(y)[1], va)
    bad_test = torch.zeros(27, 16, 5)
    monkeypatch.setattr(B, "load", lambda *a, **k: (x, y, bad_test, y[:27]))
    out = tmp_path / "run"
    assert B.main(["--validation", "--epochs", "1", "--qat-epochs", "0", "--hidden", "8", "--threads", "1",
                   "--rule", "fa", "--lr", "0.003", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["evaluated_on"] == "validation" and res["test_samples"] == 27
    assert res["recipe_overrides"] == {"lr": 0.003} and len(res["validation_accuracy_by_epoch"]) == 1
    with open(out / "logs" / "metrics.csv") as f:
        assert float(next(csv.DictReader(f))["lr"]) == pytest.approx(0.003)
