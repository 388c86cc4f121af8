"""Random and unusual networks, workloads and rule options through every registered rule other than the spike-train
ones: ``bptt``, ``gated``, ``spike-time``, ``fa``, ``dfa``, ``eprop``, ``decolle``, ``superspike``. The networks come
from ``sweep_spiketrain_models.random_case`` (conv/pool stacks, dense and recurrent layers, biases, per-layer neurons,
dropout, T from 1, batch 1, float32/float64); most cases keep only the dense part (what all rules but BPTT train),
some end in a ``LeakyReadout``, and the gated rule gets ``GatedQIF`` networks. Each rule gets random options inside
and just outside what it documents. Each (case, rule) pair is checked for

* ``run``: it runs, or refuses with a ``LearningRuleError`` (never an AttributeError, IndexError, shape error or
  NaN); an option drawn outside the documented range must be refused;
* ``finite``: loss and every gradient finite;
* ``fallback``: the numba kernels (CPU) and the tensor loops (CUDA's path, forced by ``SNN2HW_NO_NUMBA=1``) give the
  same output and gradients (bptt, fa, dfa: the rules that run the layers' compiled operators);
* ``meta``: the same gradients with ``meta`` as torch's default device and model/data explicit CPU tensors (any
  tensor made without ``device=`` meets a CPU tensor and raises, or leaves a gradient on meta);
* ``adjoint``: gated's adjoint mode equals its discrete mode;
* ``state``: the rule's ``state_dict`` through ``torch.save``/``torch.load(weights_only=True)`` into a rule built
  with another seed gives the same next gradients (fa/dfa/e-prop/DECOLLE matrices, SuperSpike's RMSprop state);
* ``window``: a window with T <= the network's hop delay and no bias (the output is constant whatever the weights)
  is refused;
* ``fit`` (every ``--deploy-every``-th case): ``Trainer.fit`` 2 epochs == 1 epoch, checkpoint, resume to 2 epochs
  (exact resume with the rule's state), then compile and run on the simulator (``deployed_accuracy``).

    nice -n 10 .venv/bin/python benchmarks/sweep_rules.py --cases 200 --seed 0

prints one line per failing (case, rule, check) with the case, and a summary by check and error kind.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import random
import sys
import tempfile
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sweep_spiketrain_models import build as build_from_layers  # noqa: E402
from sweep_spiketrain_models import close, data, loss_fn, no_numba, random_case, sweep_parser  # noqa: E402

from snn2hw.learning import LearningRuleError, make_rule  # noqa: E402
from snn2hw.nn.gated import GatedQIF  # noqa: E402

RULES = ("bptt", "gated", "spike-time", "fa", "dfa", "eprop", "decolle", "superspike")
COMPILED = ("bptt", "fa", "dfa")  # rules whose forward runs the layers' numba operators
STATEFUL = ("fa", "dfa", "eprop", "decolle", "superspike")
QAT = False  # --qat: some cases in quantization-aware mode (set_qat)
BAD = object()  # marker: the drawn option is outside the documented range (must be refused)


def _pick(r: random.Random, good: list, bad: list, p_bad: float = 0.06):
    """A value from ``good``, or (with probability ``p_bad``) a (BAD, value) from ``bad``."""
    if bad and r.random() < p_bad:
        return (BAD, r.choice(bad))
    return r.choice(good)


def random_options(r: random.Random, rule: str, steps: int) -> dict:
    """Options of ``rule``: each key drawn (or left at its default) inside its documented range, rarely outside."""
    seed = lambda: _pick(r, [0, 1, 7, 12345], ["1", 1.5, None, -0.5])  # noqa: E731
    flag = lambda: _pick(r, [True, False], ["false", "yes", 2, None])  # noqa: E731
    rate = lambda: _pick(r, [None, 0.0, 0.05, 0.3, 1.0], [-0.1, 1.5, "low", float("nan")])  # noqa: E731
    cost = lambda: _pick(r, [0.0, 1.0, 5.0], [-1.0, float("nan"), "x", float("inf")])  # noqa: E731
    reset = lambda: _pick(r, [False, True, "output"], ["hidden", 1, None])  # noqa: E731
    spec = {
        "bptt": {},
        "gated": {"mode": lambda: _pick(r, ["discrete", "adjoint"], ["Discrete", "euler", None]),
                  "checkpoints": lambda: _pick(r, [1, 2, 3, 16], [0, -2, "many", 2.5])},
        "spike-time": {"tau0": lambda: _pick(r, [0.5, 2.0, 10.0], [0.0, -1.0, float("nan"), "x"]),
                       "window": lambda: _pick(r, [None, float(steps), float(steps + 3), 2.5],
                                               [0.0, -4.0, float("nan"), float("inf"), "long"]),
                       "grid": lambda: _pick(r, [1, 2, 4], [0, -1, 1.5, "fine"]),
                       "early": lambda: _pick(r, [0.0, 0.5], [-0.5, float("nan")]),
                       "silent_slope": lambda: _pick(r, [0.0, 10.0], [-1.0, float("nan")])},
        "fa": {"seed": seed, "recurrent_feedback": lambda: _pick(r, ["exact", "random"], ["Random", None])},
        "dfa": {"seed": seed, "align_delays": flag, "rate_target": rate, "rate_cost": cost},
        "eprop": {"feedback": lambda: _pick(r, ["random", "symmetric"], ["uniform", None]), "seed": seed,
                  "reset_in_trace": reset, "align_delays": flag, "rate_target": rate, "rate_cost": cost},
        "decolle": {"seed": seed, "reset_in_trace": reset,
                    "readout_scale": lambda: _pick(r, [0.1, 1.0, 4.0], [float("nan"), float("inf"), "big", 0.0]),
                    "rate_target": rate, "rate_cost": cost},
        "superspike": {"feedback": lambda: _pick(r, ["symmetric", "random", "uniform"], ["exact", None]),
                       "tau": lambda: _pick(r, [1.0, 5.0, 10.0, 40.0], [0.0, -2.0, float("nan"), float("inf")]),
                       "seed": seed, "rmsprop": flag,
                       "rms_decay": lambda: _pick(r, [0.0, 0.9, 0.999], [-0.1, 1.5, float("nan")]),
                       "rms_eps": lambda: _pick(r, [1e-8, 1e-4], [0.0, -1e-8, float("nan")]),
                       "target_interval": lambda: _pick(r, [1, 2, 5], [0, -1, 1.5]),
                       "target_offset": lambda: _pick(r, [0, 2, steps + 1], [-1, -3, 0.5]),
                       "reset_in_trace": reset, "rate_target": rate, "rate_cost": cost},
    }[rule]
    out, bad = {}, []
    for key, draw in spec.items():
        if r.random() < 0.5:
            continue
        v = draw()
        if isinstance(v, tuple) and v and v[0] is BAD:
            bad.append(key)
            v = v[1]
        out[key] = v
    return {"options": out, "bad": bad}


def dense_variant(case: dict, r: random.Random) -> dict:
    """The case's dense part alone (the conv/pool/flatten layers dropped, the first dense layer fed by the flat
    input), sometimes ending in a ``LeakyReadout`` or with a ``Dropout`` between dense layers."""
    case = copy.deepcopy(case)
    dense = [c for c in case["layers"] if c.get("layer", "LIFDense") in ("LIFDense", "RecurrentLIFDense")]
    dense[0]["in_features"] = case["in_features"]
    layers = []
    for i, c in enumerate(dense):
        if 0 < i and r.random() < 0.08:
            layers.append({"layer": "Dropout", "p": 0.2})
        layers.append(c)
    if r.random() < 0.15:
        last = layers[-1]
        layers[-1] = {"layer": "LeakyReadout", "in_features": last["in_features"], "out_features": last["out_features"],
                      "du": last["du"], "dv": last["dv"], "v_scale": r.choice([0.5, 1.0, 4.0]), "bias": last["bias"]}
    case["layers"] = layers
    return case


def gated_case(r: random.Random) -> dict:
    return {"gated": {"in_features": r.randint(1, 9), "hidden": r.choice([1, 2, 5, 12]),
                      "out_features": r.choice([2, 3, 4]), "tau_v": r.choice([1.0, 2.0, 10.0]),
                      "tau_s": r.choice([1.0, 5.0, 10.0]), "delta": r.choice([0.3, 1.0, 3.0]),
                      "i0": r.choice([-0.05, 0.0, 0.1]), "input_gain": r.uniform(0.5, 4.0)},
            "steps": r.choice([1, 2, 3, 5, 12, 30]), "batch": r.choice([1, 1, 2, 5]),
            "density": r.choice([0.05, 0.3, 0.7]), "dtype": r.choice(["float64", "float32"]),
            "seed": r.randint(0, 10**6)}


def make_case(r: random.Random) -> dict:
    if r.random() < 0.12:
        case = gated_case(r)
        case["in_features"], case["classes"] = case["gated"]["in_features"], case["gated"]["out_features"]
    else:
        case = random_case(r)
        if case.get("bad_geometry"):
            return case
        if not case.get("bad_geometry") and r.random() < 0.7:
            case = dense_variant(case, r)
    case["rules"] = {rule: random_options(r, rule, case["steps"]) for rule in RULES}
    # drawn from the case's own seed, so that --qat leaves every other draw (and case) as it was
    case["qat"] = QAT and "gated" not in case and random.Random(case["seed"]).random() < 0.15
    return case


def build(case: dict):
    if "gated" in case:
        torch.manual_seed(case["seed"])
        return GatedQIF(**case["gated"]).to(getattr(torch, case["dtype"]))
    net = build_from_layers(case)
    if case.get("qat"):
        from snn2hw.quantize import QuantConfig
        net.set_qat(QuantConfig())
    return net


def _loss(rule):
    if rule == "spike-time":  # the rule's scores (batch, n) in training, spikes (batch, T, n) in evaluation
        from snn2hw.learning.spike_time import first_spike_cross_entropy
        return first_spike_cross_entropy
    return loss_fn


def gradients(case: dict, rule: str, options: dict, net=None, state=None, rule_obj=None):
    """(output, loss, [(name, grad)], rule) of one compute_gradients on the case's batch."""
    net = build(case) if net is None else net
    net.train(True)  # dropout on: the same mask on every path (seeded below)
    x, y = data(case)
    rr = rule_obj or make_rule(rule, **options)
    if rule_obj is None:
        rr.setup(net)
    if state is not None:
        rr.load_state_dict(state)
    torch.manual_seed(1)
    res = rr.compute_gradients(net, x, y, _loss(rule), {})
    out = res.output[-1] if isinstance(res.output, (list, tuple)) else res.output
    grads = [(n, p.grad.detach().double().clone()) for n, p in net.named_parameters() if p.grad is not None]
    return out.detach().double(), float(res.loss), grads, rr


def _close(a, b, case):
    return close((a[0], a[2]), (b[0], b[2]), case)


def hops(net) -> int | None:
    """One-step hop layers of a SpikingSequential (None for other models)."""
    from snn2hw.nn.conv import HopLIF
    from snn2hw.nn.layers import LIFDense, SpikingSequential
    if not isinstance(net, SpikingSequential):
        return None
    return sum(isinstance(l, (LIFDense, HopLIF)) for l in net.layers)


def constant_output(net) -> bool:
    """No bias and no trainable threshold anywhere: before the input arrives every state is exactly 0."""
    for layer in net.layers:
        if getattr(layer, "bias", None) is not None:
            return False
        th = getattr(layer, "threshold", None)
        if isinstance(th, torch.nn.Parameter) and th.requires_grad:
            return False
    return True


@contextlib.contextmanager
def meta_default():
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def meta_check(case, rule, options, base):
    net = build(case)  # on the CPU, before meta becomes the default
    x, y = data(case)
    rr = make_rule(rule, **options)
    with no_numba(), meta_default():
        rr.setup(net)
        torch.manual_seed(1)
        res = rr.compute_gradients(net, x, y, _loss(rule), {})
    out = res.output[-1] if isinstance(res.output, (list, tuple)) else res.output
    grads = [(n, p.grad.detach().double().clone()) for n, p in net.named_parameters() if p.grad is not None]
    for n, g in grads:
        if g.device.type != "cpu":
            return f"gradient of {n} on {g.device}"
    return _close(base, (out.detach().double(), None, grads), case)


def state_check(case, rule, options, base):
    """Resume of the rule's state: rule A after one batch, its state through torch.save/load into rule B (another
    seed); the next batch's gradients of A and B on fresh copies of the network must be equal."""
    a = base[3]
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other = dict(options, seed=int(options.get("seed", 0)) + 99) if rule in STATEFUL else dict(options)
    ga = gradients(case, rule, options, rule_obj=a)
    b = make_rule(rule, **other)
    net = build(case)
    b.setup(net)
    b.load_state_dict(state)
    gb = gradients(case, rule, other, net=net, rule_obj=b)
    return _close(ga, gb, case)


def fit_check(case, rule, options) -> str | None:
    """2 epochs straight == 1 epoch, checkpoint, resume to 2; then compile and run on the simulator."""
    from snn2hw.learning.experiment import deployed_accuracy
    from snn2hw.train.trainer import Trainer, TrainerConfig

    fc = dict(case, dtype="float32", batch=max(case["batch"], 3) + 2)
    x, y = data(fc)
    nets = []
    with tempfile.TemporaryDirectory() as tmp:
        for epochs, resume in ((2, False), (1, False), (2, True)):
            net = build(fc) if not resume else nets[-1]
            cfg = TrainerConfig(epochs=epochs, batch_size=case["batch"] + 1, lr=1e-3, progress=False, rule=rule,
                                rule_options=options, tensorboard=False, save_best=None, checkpoint_dir=tmp,
                                calibrate_rate=None)
            Trainer(net, cfg, loss_fn=_loss(rule), predict_fn=False).fit((x, y), (x, y), resume=resume)
            nets.append(net)
    for (n, p), (_, q) in zip(nets[0].named_parameters(), nets[2].named_parameters()):
        if not bool(torch.isfinite(p).all()):
            return f"non-finite {n} after fit"
        if not torch.equal(p, q):
            return f"resume not exact: {n} differs by {float((p - q).abs().max()):.3g}"
    if "gated" in case:
        return None
    from snn2hw.compiler.rules import DesignRuleError
    from snn2hw.quantize import QuantizationError
    try:
        acc = deployed_accuracy(nets[0].cpu(), x, y)
    except (QuantizationError, DesignRuleError) as exc:
        print(f"    [case {case.get('index')}] deploy refused ({rule}): {str(exc)[:160]}", flush=True)
        return None
    return None if 0.0 <= acc <= 1.0 else f"accuracy {acc}"


def kind_of(msg: str) -> str:
    return msg.split(":", 1)[0].split("\n")[0][:60]


def run_pair(case: dict, rule: str, deploy: bool, log, stats: dict) -> str:
    opts = case["rules"][rule]
    options, bad = opts["options"], opts["bad"]
    try:
        base = gradients(case, rule, options)
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc, LearningRuleError):
            log(f"refused {rule}: {exc}", None)
            return "refused"
        log(f"FAIL {rule} run: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}", case, f"run/{type(exc).__name__}")
        return "fail"
    failed = []
    if bad:
        failed.append(("bad-option", f"accepted options outside the documented range: "
                                     f"{ {k: options[k] for k in bad} }"))
    net = build(case)
    h = hops(net)
    # DECOLLE's local losses and the rate regularisers read the hidden layers too (from step 1 on)
    reads_hidden = rule == "decolle" or options.get("rate_target") is not None
    first = 1 if reads_hidden else h
    # spike-time is left out, as the library leaves it out: its loss is on a continuous-time relaxation over its
    # own ``window`` option, not on the discrete network's output, so a silent discrete output does not make it constant
    if rule != "spike-time" and h is not None and case["steps"] <= first and constant_output(net):
        failed.append(("window", f"T = {case['steps']} <= {first} (of {h} hops), no bias: everything the loss "
                                 f"reads is constant, not refused"))
    if not math.isfinite(base[1]):
        failed.append(("finite", f"loss {base[1]}"))
    nonfinite = [n for n, g in base[2] if not bool(torch.isfinite(g).all())]
    if nonfinite:
        failed.append(("finite", f"non-finite gradient of {nonfinite}"))

    def guarded(name, fn):
        try:
            m = fn()
        except Exception as exc:  # noqa: BLE001
            m = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}"
        stats.setdefault(name, [0, 0])[0 if m is None else 1] += 1
        if m:
            failed.append((name, m))

    if rule in COMPILED:
        def fallback():
            with no_numba():
                return _close(base, gradients(case, rule, options), case)
        guarded("fallback", fallback)
    if case["index"] % 2 == 0:
        guarded("meta", lambda: meta_check(case, rule, options, base))
    if rule == "gated":
        other = "adjoint" if options.get("mode", "discrete") == "discrete" else "discrete"
        def adjoint():  # equal "up to rounding order" (snn2hw.nn.gated): outputs compared with a tolerance too
            other_run = gradients(case, rule, dict(options, mode=other))
            if not torch.allclose(base[0], other_run[0], rtol=1e-4, atol=1e-6):
                return f"outputs differ by {float((base[0] - other_run[0]).abs().max()):.3g}"
            return _close((other_run[0],) + base[1:], other_run, dict(case, dtype="float32"))
        guarded("adjoint", adjoint)
    if rule in STATEFUL:
        guarded("state", lambda: state_check(case, rule, options, base))
    if deploy:
        guarded("fit", lambda: fit_check(case, rule, options))
    for n, m in failed:
        log(f"FAIL {rule} {n}: {m}", case, n)
    return "fail" if failed else "ok"


def main(argv=None) -> int:
    ap = sweep_parser(__doc__.split("\n")[0], RULES)
    ap.add_argument("--timing", action="store_true", help="print each pair's seconds to stderr")
    ap.add_argument("--qat", action="store_true", help="put 15 %% of the cases in quantization-aware mode")
    args = ap.parse_args(argv)
    global QAT
    QAT = args.qat
    torch.set_num_threads(1)
    r = random.Random(args.seed)
    total = {"ok": 0, "refused": 0, "fail": 0}
    refusals: dict = {}
    kinds: dict = {}
    stats: dict = {}
    i = 0

    def log(msg, case, kind=None):
        if case is None:
            key = msg.split(":", 1)[0] + ": " + msg.split(":", 1)[1][:80]
            refusals[key] = refusals.get(key, 0) + 1
            return
        kinds[kind] = kinds.get(kind, 0) + 1
        print(f"[case {i}] {msg}\n    {json.dumps(case, default=str)}", flush=True)

    for i in range(args.cases):
        case = make_case(r)
        case["index"] = i
        if args.only is not None and i != args.only:
            continue
        if case.get("bad_geometry"):
            continue  # geometry refusals: sweep_spiketrain_models covers them
        for rule in args.rules.split(","):
            deploy = args.deploy_every > 0 and i % args.deploy_every == 0
            t0 = time.perf_counter()
            total[run_pair(case, rule, deploy, log, stats)] += 1
            if args.timing:
                print(f"  case {i} {rule}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    print("refusals:", json.dumps(dict(sorted(refusals.items(), key=lambda kv: -kv[1])), indent=1))
    print("checks (passed, failed):", stats)
    print("failures by kind:", kinds)
    print("summary (case x rule):", total)
    return 1 if total["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
