"""ANN-to-SNN conversion from ONNX: a digits MLP trained here with torch, exported with ``torch.onnx.export``,
converted by the CLI and deployed on the simulator well above chance; the parser's view of a CNN (batch
norm folded, average pooling, softmax dropped) equals the torch model; unsupported operators come back as
one typed error naming every node; the converted network fine-tunes with the training engine."""
from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from snn2hw.backends import sim
from snn2hw.cli import main
from snn2hw.compiler import compile_graph
from snn2hw.onnx.convert import ConversionConfig, ConversionError, UnsupportedOperatorError, ann_module, convert, encode
from snn2hw.onnx.parse import parse
from snn2hw.train.checkpoint import load_checkpoint

STEPS = 32


def to_onnx(net: torch.nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    buf = io.BytesIO()
    torch.onnx.export(net.eval(), example, buf, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


@pytest.fixture(scope="module")
def digits_mlp():
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, d.target, test_size=0.2, random_state=0, stratify=d.target)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10), torch.nn.Softmax(1))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    xt, yt = torch.as_tensor(x_tr), torch.as_tensor(y_tr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny MLP: threads only contend (the shared CI machine)
    try:
        for _ in range(8):
            for i in range(0, len(xt), 64):
                opt.zero_grad()
                torch.nn.functional.nll_loss(torch.log(net(xt[i:i + 64]) + 1e-9), yt[i:i + 64]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        ann_acc = float((net(torch.as_tensor(x_te)).argmax(1).numpy() == y_te).mean())
    return to_onnx(net, torch.zeros(1, 64)), x_tr, x_te, y_te, ann_acc


def test_cli_converts_digits_mlp_and_deploys_above_chance(digits_mlp, tmp_path):
    model, x_tr, x_te, y_te, ann_acc = digits_mlp
    assert ann_acc > 0.9
    onnx.save(model, tmp_path / "mlp.onnx")
    np.save(tmp_path / "cal.npy", x_tr[:256])
    rc = main(["convert", str(tmp_path / "mlp.onnx"), "--calibration", str(tmp_path / "cal.npy"), "-o",
               str(tmp_path / "snn.ckpt"), "--steps", str(STEPS), "--artefact", str(tmp_path / "snn.s2h.npz")])
    assert rc == 0
    snn = load_checkpoint(tmp_path / "snn.ckpt")
    spikes = encode(x_te, STEPS)
    with torch.no_grad():
        float_acc = float((snn(spikes)[:, -1].argmax(1).numpy() == y_te).mean())
    from snn2hw import artefact

    art = artefact.load(tmp_path / "snn.s2h.npz")
    out = art.graph.outputs[0]
    res = sim.run(art, spikes.numpy().astype(np.int64), record_state=[out])
    deployed_acc = float((res.v[out][:, -1].argmax(1) == y_te).mean())
    assert float_acc > 0.85 and deployed_acc > 0.85, (ann_acc, float_acc, deployed_acc)
    assert deployed_acc > ann_acc - 0.06


def test_parser_folds_batchnorm_and_matches_torch_cnn():
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.AvgPool2d(2),
        torch.nn.Conv2d(4, 6, 3, stride=1, groups=2), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Dropout(0.2),
        torch.nn.Linear(6 * 2 * 2, 10), torch.nn.Softmax(dim=1))
    with torch.no_grad():  # a non-trivial batch norm
        bn = net[1]
        bn.running_mean.uniform_(-0.2, 0.2), bn.running_var.uniform_(0.5, 2.0), bn.weight.uniform_(0.5, 1.5)
    net.eval()
    x = torch.rand(16, 1, 8, 8)
    chain = parse(to_onnx(net, x[:1]))
    kinds = [type(s).__name__ for s in chain.stages]
    assert kinds == ["Conv", "AvgPool", "Conv", "Flatten", "Linear"]
    with torch.no_grad():
        want = torch.log_softmax(torch.log(net(x)), 1)
        got = torch.log_softmax(ann_module(chain)(x.double()), 1)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-4)
    snn, report = convert(chain, x.numpy(), ConversionConfig(steps=16, calibration_samples=16))
    assert [type(m).__name__ for m in snn.layers] == ["ConvLIF", "SumPoolLIF", "ConvLIF", "Flatten", "LeakyReadout"]
    assert len(report.rates) == 3
    art = compile_graph(snn.to_ir())  # the converted network goes through the same pipeline
    assert art.graph.is_quantized


def test_unsupported_operators_one_error_naming_every_node(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Sigmoid(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                              torch.nn.Linear(2 * 3 * 3, 4), torch.nn.Tanh())
    model = to_onnx(net, torch.zeros(1, 1, 8, 8))
    with pytest.raises(UnsupportedOperatorError) as err:
        parse(model)
    ops = sorted(op for _, op in err.value.nodes)
    assert ops == ["MaxPool", "Sigmoid", "Tanh"]
    for node in model.graph.node:
        if node.op_type in ops:
            assert node.name in str(err.value)
    onnx.save(model, tmp_path / "bad.onnx")
    np.save(tmp_path / "cal.npy", np.zeros((2, 1, 8, 8), np.float32))
    assert main(["convert", str(tmp_path / "bad.onnx"), "--calibration", str(tmp_path / "cal.npy"),
                 "-o", str(tmp_path / "x.ckpt")]) == 2
    assert not (tmp_path / "x.ckpt").exists()


def test_bad_inputs_are_typed_errors(tmp_path, digits_mlp):
    model = digits_mlp[0]
    with pytest.raises(ConversionError, match=r"\[0, 1\]"):
        convert(model, np.full((4, 64), 3.0))
    with pytest.raises(ConversionError, match="do not match"):
        convert(model, np.zeros((4, 10)))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ConversionError, match="not an ONNX model"):
        parse(tmp_path / "junk.onnx")


def test_converted_network_fine_tunes(digits_mlp):
    from snn2hw.train.classifier import TrainConfig, train_classifier

    model, x_tr, _, _, _ = digits_mlp
    snn, _ = convert(model, x_tr[:128], ConversionConfig(steps=16, calibration_samples=128))
    d = load_digits()
    _, _, y_tr, _ = train_test_split(d.data, d.target, test_size=0.2, random_state=0, stratify=d.target)
    before = snn.layers[0].weight.detach().clone()
    hist = train_classifier(snn.train(), encode(x_tr[:128], 16), torch.as_tensor(y_tr[:128]),
                            TrainConfig(epochs=1, batch_size=64, lr=1e-3, count_scale=1.0 / 16**2, progress=False))
    assert np.isfinite(hist[-1]["loss"])
    assert not torch.equal(before, snn.layers[0].weight.detach())


def test_compile_of_an_onnx_model_points_to_convert(tmp_path, digits_mlp, capsys):
    path = tmp_path / "ann.onnx"
    onnx.save(digits_mlp[0], path)
    assert main(["compile", str(path), "-o", str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err
    assert "an ONNX model" in err and "snn2hw convert" in err and err.count("\n") == 1
    assert not (tmp_path / "o.npz").exists()
