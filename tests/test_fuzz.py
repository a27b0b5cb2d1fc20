"""Fuzz: random, often malformed, arguments to every public function. Each call must raise
TypeError/ValueError with every array unchanged, or succeed with the reference's result; a crash
(segfault, illegal instruction) would end the test run."""
import copy
import pickle
from decimal import Decimal
from fractions import Fraction

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import fusedopt
from conftest import assert_matches_reference
from fusedopt import optim, reference
from test_errors import snapshot

DTYPES = [np.float32, np.float32, np.float64, np.float16, np.int32, np.bool_, np.complex64, ">f4"]
SPECIAL = [0.0, -0.0, 1e-3, 0.9, 1.0, 1.5, -1.0, float("nan"), float("inf"), -float("inf"), 1e300]
# what a user may pass for a number: floats as strings, huge ints, None, Fraction, Decimal, NumPy scalars
ODD_NUMBERS = ["0.001", "1e-3", 10**400, -10**400, 2**63, None, Fraction(1, 10), Fraction(9, 10), Decimal("0.01"),
               Decimal("NaN"), np.float32(0.1), np.float64(0.9), np.float16(0.5), np.int64(0), np.int32(1), [0.1]]
ODD_STEPS = [1.5, 2.0, "1", 2**63, 2**63 - 1, -2**63 - 1, None, np.int64(2), np.float64(3.0), True, Fraction(3, 1)]
ODD_FLAGS = ["yes", None, np.bool_(True), 1, [True]]


def plain(value):
    """value as the kernels receive it (pybind11 converts with __float__ / __index__ / __bool__)."""
    if isinstance(value, (Fraction, Decimal, np.floating)):
        return float(value)
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    return value


@st.composite
def an_array(draw, base, n):
    """An array for one argument: usually well-formed, sometimes of another dtype, shape,
    layout or writability, sometimes a view of another argument's memory."""
    kind = draw(st.sampled_from(["good"] * 6 + ["dtype", "shape", "strided", "readonly", "view", "2d", "notarray"]))
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    if kind == "notarray":
        return draw(st.sampled_from([None, 1.0, [1.0, 2.0], "x"]))
    if kind == "view":
        offset = draw(st.integers(0, 4))
        return base[offset:offset + n] if base.size >= offset + n else base
    dtype = draw(st.sampled_from(DTYPES)) if kind == "dtype" else np.float32
    size = n + draw(st.integers(1, 3)) if kind == "shape" else n
    a = (rng.standard_normal(size * (2 if kind == "strided" else 1)) * 2).astype(dtype)
    if kind == "strided":
        a = a[::2]
    if kind == "2d" and size % 2 == 0 and size:
        a = a.reshape(2, -1)
    if kind == "readonly":
        a.flags.writeable = False
    return a


@st.composite
def call(draw):
    name = draw(st.sampled_from(["sgd_", "adagrad_", "rmsprop_", "adam_", "adamw_", "clip_grad_norm_",
                                 "clip_grad_value_", "grad_norm", "all_finite"]))
    n = draw(st.integers(0, 40))
    ntensors = draw(st.integers(0, 3))
    as_list = draw(st.booleans()) or ntensors != 1
    base = np.abs(np.random.default_rng(n).standard_normal(200)).astype(np.float32)
    nargs = {"sgd_": 3, "adagrad_": 3, "rmsprop_": 3, "adam_": 4, "adamw_": 4}.get(name, 1)
    args = []
    for _ in range(nargs):
        tensors = [draw(an_array(base, n)) for _ in range(max(ntensors, 1))]
        if as_list and draw(st.integers(0, 9)) == 0:
            tensors = tensors[:-1]  # a list of another length
        args.append(tensors if as_list else tensors[0])
    number = st.one_of(st.sampled_from(SPECIAL), st.floats(-2, 2), st.sampled_from(ODD_NUMBERS))
    flag = st.one_of(st.booleans(), st.sampled_from(ODD_FLAGS))
    kw = {}
    if name == "sgd_":
        kw = dict(lr=draw(number), momentum=draw(number), nesterov=draw(flag),
                  weight_decay=draw(number), step=draw(st.sampled_from([None, 1, 2, 0] + ODD_STEPS)))
    elif name == "adagrad_":
        kw = dict(lr=draw(number), lr_decay=draw(number), eps=draw(number),
                  step=draw(st.sampled_from([1, 5, 0, -1] + ODD_STEPS)))
    elif name == "rmsprop_":
        kw = dict(lr=draw(number), alpha=draw(number), eps=draw(number), centered=draw(flag))
    elif name in ("adam_", "adamw_"):
        kw = dict(lr=draw(number), beta1=draw(number), beta2=draw(number), eps=draw(number),
                  weight_decay=draw(number), amsgrad=draw(flag), step=draw(st.sampled_from([1, 3, 0] + ODD_STEPS)))
    elif name == "clip_grad_norm_":
        kw = dict(max_norm=draw(number), norm_type=draw(st.sampled_from([1.0, 2.0, 3.0, float("inf"), 0.0, -1.0])))
    elif name == "clip_grad_value_":
        kw = dict(clip_value=draw(number))
    if name in ("sgd_", "adagrad_", "rmsprop_", "adam_", "adamw_"):
        kw["skip_if_nonfinite"] = draw(st.booleans())
        kw["grad_scale"] = draw(st.sampled_from([None, 1.0, 1024.0, 0.0, -1.0, float("nan"), 0.5, "2", np.float32(4.0),
                                                 Fraction(1, 2), 10**400]))
    return name, args, kw


def copies(obj):
    if isinstance(obj, np.ndarray):
        return obj.copy()
    if isinstance(obj, list):
        return [copies(x) for x in obj]
    return obj


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(call())
def test_fuzz_public_functions(c):
    name, args, kw = c
    before = snapshot(args)
    ref_args = copies(args)
    try:
        with np.errstate(all="ignore"):
            result = getattr(fusedopt, name)(*args, **kw)
    except (TypeError, ValueError) as e:
        event(f"raised {type(e).__name__}")
        assert snapshot(args) == before, "an error after a write"
        assert "incompatible function arguments" not in str(e), "an error that names no argument"
        return
    event("ran")
    # it ran: the arguments were valid, so the reference must agree
    kw = {k: plain(v) for k, v in kw.items()}
    ref_kw = {k: v for k, v in kw.items() if k not in ("grad_scale", "skip_if_nonfinite")}
    if name in ("grad_norm", "all_finite", "clip_grad_norm_", "clip_grad_value_"):
        firsts = ref_args[0] if isinstance(ref_args[0], list) else [ref_args[0]]
        flat = np.concatenate([np.ravel(a).astype(np.float64) for a in firsts] + [np.zeros(0)])
        if name == "all_finite":
            assert result == bool(np.all(np.isfinite(flat)))
        elif name == "clip_grad_value_":
            got = args[0] if isinstance(args[0], list) else [args[0]]
            want = ref_args[0] if isinstance(ref_args[0], list) else [ref_args[0]]
            for g, w in zip(got, want):
                with np.errstate(over="ignore"):  # 1e300 becomes inf in float32, as in the kernel
                    limit = w.dtype.type(kw["clip_value"])
                np.testing.assert_array_equal(g, np.clip(w, -limit, limit))
        return
    if result is False:  # skipped: a non-finite gradient, nothing written
        assert kw["skip_if_nonfinite"]
        assert snapshot(args) == before
        return
    ref_call_args = list(ref_args)
    # the reference takes the grads as the kernels compute with them: 16-bit grads of float32 params
    # widened to float32 (exact), then unscaled
    as_list = isinstance(ref_args[1], list)
    grads = [np.array(g, p.dtype) for g, p in zip(*(a if as_list else [a] for a in (ref_args[1], ref_args[0])))]
    if kw.get("grad_scale"):
        for g in grads:
            g *= g.dtype.type(1 / kw["grad_scale"])
    ref_call_args[1] = grads if as_list else grads[0]
    # the reference once more in float64, for assert_matches_reference's allowance (a negative
    # state_sum drawn here, plus g^2, may cancel)
    wide_args = [[None if a is None else np.asarray(a, np.float64) for a in arg] if isinstance(arg, list)
                 else np.asarray(arg, np.float64) for arg in ref_call_args]
    with np.errstate(all="ignore"):
        getattr(reference, name)(*ref_call_args, **ref_kw)
        getattr(reference, name)(*wide_args, **ref_kw)
    for k, (got, want, wide) in enumerate(zip(args, ref_args, wide_args)):
        for g, w, x in zip(*(a if isinstance(a, list) else [a] for a in (got, want, wide))):
            if g is None and w is None:  # an unused state list may hold Nones, as torch's momentum_buffer_list
                continue
            # (the grads, k == 1, are not written: compared as they are)
            assert_matches_reference(g, w, None if k == 1 else x, 1e-4, 1e-4, f"{name} {kw}")


@st.composite
def batchnorm_call(draw):
    """batchnorm_forward / backward arguments: each one malformed with a small probability."""
    def rarely(good, *bad):  # good most of the time, one of bad otherwise
        return draw(st.sampled_from([good] * (10 * len(bad)) + list(bad)))

    ndim = rarely(draw(st.integers(2, 4)), 1)
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim)))
    shape = rarely(shape, tuple(0 for _ in shape))
    axis = rarely(draw(st.sampled_from([1, -1])), 0, 5, -7)
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    x = rng.standard_normal(shape).astype(rarely(draw(st.sampled_from([np.float32, np.float64])), np.int32))
    if x.ndim >= 2 and rarely(False, True):
        x = np.swapaxes(x, 0, 1)  # not C-contiguous
    C = x.shape[axis] if -x.ndim <= axis < x.ndim else 3
    C = rarely(C, C + 1)
    dtype = x.dtype if x.dtype.kind == "f" else np.float32

    def per_channel(positive=False):
        kind = rarely("good", "none", "readonly", "dtype")
        if kind == "none":
            return None
        a = np.abs(rng.standard_normal(C)) + 0.5 if positive else rng.standard_normal(C)
        a = a.astype(np.float16 if kind == "dtype" else dtype)
        if kind == "readonly":
            a.flags.writeable = False
        return a

    kw = dict(training=rarely(draw(st.booleans()), *ODD_FLAGS),
              momentum=rarely(draw(st.sampled_from([0.1, 0.0, 1.0])), -0.5, float("nan"), *ODD_NUMBERS),
              eps=rarely(draw(st.sampled_from([1e-5, 1e-3])), -1.0, float("inf"), *ODD_NUMBERS),
              axis=rarely(axis, *ODD_STEPS), relu=rarely(draw(st.booleans()), *ODD_FLAGS))
    out_kind = rarely(draw(st.sampled_from(["none", "good"])), "x", "readonly", "shape")
    out = {"none": None, "good": np.empty_like(x), "x": x, "readonly": np.empty_like(x),
           "shape": np.empty(x.size + 1, x.dtype)}[out_kind]
    if out_kind == "readonly":
        out.flags.writeable = False
    return x, per_channel(), per_channel(), per_channel(), per_channel(positive=True), out, kw


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(batchnorm_call())
def test_fuzz_batchnorm(c):
    x, weight, bias, running_mean, running_var, out, kw = c
    args = [x, weight, bias, running_mean, running_var, out]
    before = snapshot(args)
    ref_stats = copies([running_mean, running_var])
    try:
        with np.errstate(all="ignore"):
            y, save_mean, save_invstd = fusedopt.batchnorm_forward(x, weight, bias, running_mean, running_var,
                                                                   out=out, **kw)
    except (TypeError, ValueError) as e:
        event(f"forward raised {type(e).__name__}")
        assert snapshot(args) == before, "an error after a write"
        assert "incompatible function arguments" not in str(e), "an error that names no argument"
        return
    event("forward ran")
    kw = {k: plain(v) for k, v in kw.items()}
    with np.errstate(all="ignore"):
        y_r, _, _ = reference.batchnorm_forward(x, weight, bias, *ref_stats, **kw)
        np.testing.assert_allclose(y, y_r, rtol=1e-4, atol=1e-4)
        dy = np.ones_like(x)
        before = snapshot([x, weight, save_mean, save_invstd])
        try:
            dx, dw, db = fusedopt.batchnorm_backward(dy, x, weight, save_mean, save_invstd, axis=kw["axis"],
                                                     training=kw["training"], relu_output=y if kw["relu"] else None)
        except (TypeError, ValueError):
            assert snapshot([x, weight, save_mean, save_invstd]) == before
            return
        dx_r, _, _ = reference.batchnorm_backward(dy, x, weight, save_mean, save_invstd, axis=kw["axis"],
                                                  training=kw["training"], relu_output=y if kw["relu"] else None)
        np.testing.assert_allclose(dx, dx_r, rtol=1e-3, atol=1e-3)


# ---- optimizer classes: param groups changed between steps -------------------------------------------

CLASS_KWARGS = {"SGD": dict(lr=0.05, momentum=0.9), "Adagrad": dict(lr=0.1), "RMSprop": dict(lr=0.01, centered=True),
                "Adam": dict(lr=0.01, amsgrad=True), "AdamW": dict(lr=0.01)}
ODD_LRS = [Fraction(1, 100), Decimal("0.02"), np.float32(0.03), np.float64(0.01), np.int64(0), "0.01", 10**400, None,
           float("nan"), -0.1]
OPERATIONS = ["step", "step", "step", "append", "insert", "remove", "replace", "bad param", "new group", "lr",
              "no grad", "copy"]


def bad_param(rng, like):
    kind = rng.integers(4)
    if kind == 0:
        return like.astype(np.int32)
    if kind == 1:
        return np.zeros(max(like.size, 2) * 2, like.dtype)[::2]  # (a 1-element view is contiguous)
    if kind == 2:
        a = like.copy()
        a.flags.writeable = False
        return a
    return like.tolist()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(sorted(CLASS_KWARGS)),
       st.lists(st.tuples(st.sampled_from(OPERATIONS), st.integers(0, 2**32 - 1)), min_size=1, max_size=14))
def test_fuzz_param_group_changes(name, operations):
    """Params appended, inserted, removed and replaced (also by arrays a step refuses), groups added,
    lr set to numbers of any type, grads left out, copies: after every step each param is bitwise
    what an optimizer of that param alone (same hyperparameters, same steps) gives, and a step
    that raises changes no param and no state."""
    rng = np.random.default_rng(operations[0][1])
    cls = getattr(optim, name)

    def new_param():
        return rng.standard_normal(int(rng.integers(1, 40))).astype(np.float32 if rng.integers(2) else np.float64)

    opt = cls([new_param()], **CLASS_KWARGS[name])
    alone = {}  # id(param) -> (param, an optimizer of a copy of it alone)

    def all_params():
        return [p for g in opt.param_groups for p in g["params"]]

    def everything():
        return [p.tobytes() for p in all_params()], {i: {k: np.asarray(v).tobytes() for k, v in s.items()}
                                                    for i, s in opt.state_dict()["state"].items()}

    for operation, seed in operations:
        r = np.random.default_rng(seed)
        group = opt.param_groups[int(r.integers(len(opt.param_groups)))]
        params = group["params"]
        if operation == "append":
            params.append(new_param())
        elif operation == "insert":
            params.insert(int(r.integers(len(params) + 1)), new_param())
        elif operation == "remove" and len(params) > 1:
            params.pop(int(r.integers(len(params))))
        elif operation == "replace":
            params[int(r.integers(len(params)))] = new_param()
        elif operation == "new group":
            opt.add_param_group({"params": [new_param()], "lr": 0.02})
        elif operation == "lr":
            group["lr"] = ODD_LRS[int(r.integers(len(ODD_LRS)))]
        elif operation == "copy":
            twin = pickle.loads(pickle.dumps(opt)) if r.integers(2) else copy.deepcopy(opt)
            assert [p.tobytes() for g in twin.param_groups for p in g["params"]] == everything()[0]
        elif operation in ("step", "no grad", "bad param"):
            saved = None
            if operation == "bad param":
                j = int(r.integers(len(params)))
                saved, params[j] = params[j], bad_param(r, params[j])
            grads = [None if operation == "no grad" and r.integers(3) == 0
                     else np.asarray(r.standard_normal(np.shape(p)), np.asarray(p).dtype) for p in all_params()]
            before = everything() if saved is None else None
            start = {id(p): p.copy() for p in all_params() if isinstance(p, np.ndarray)}
            try:
                with np.errstate(all="ignore"):
                    opt.step(grads)
            except (TypeError, ValueError) as e:
                event(f"step raised {type(e).__name__}")
                assert "incompatible function arguments" not in str(e)
                if saved is not None:
                    params[j] = saved
                else:  # an lr it refuses (the only other way to fail here)
                    assert everything() == before, "a step that raised changed something"
                    for g in opt.param_groups:
                        g["lr"] = 0.01
                continue
            assert saved is None, "a step took a param it must refuse"
            event("step ran")
            for p, grad in zip(all_params(), grads):
                if grad is None:
                    continue
                hyper = next({k: v for k, v in g.items() if k != "params"} for g in opt.param_groups
                             if any(q is p for q in g["params"]))
                if id(p) not in alone:
                    alone[id(p)] = (p, cls([start[id(p)]], **hyper))
                one = alone[id(p)][1]
                one.param_groups[0].update(hyper)
                with np.errstate(all="ignore"):
                    one.step([grad])
                assert p.tobytes() == one.param_groups[0]["params"][0].tobytes()
