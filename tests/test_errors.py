"""Bad input: a TypeError or ValueError naming the argument, and every array byte-identical."""
import decimal
import fractions

import numpy as np
import pytest

import fusedopt


def adam_args(n=10, dtype=np.float32, count=None):
    """Valid arguments for adam_: one array per argument, or lists of `count` arrays."""
    rng = np.random.default_rng(0)
    make = lambda: rng.standard_normal(n).astype(dtype)  # noqa: E731
    if count is None:
        return dict(params=make(), grads=make(), exp_avgs=make(), exp_avg_sqs=np.abs(make()))
    return {k: [make() if k != "exp_avg_sqs" else np.abs(make()) for _ in range(count)]
            for k in ("params", "grads", "exp_avgs", "exp_avg_sqs")}


def readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def with_(args, **changes):
    out = dict(args)
    out.update(changes)
    return out


def snapshot(obj):
    """The bytes of every ndarray reachable from obj (dicts, lists), to compare after a call."""
    if isinstance(obj, np.ndarray):
        return [obj.tobytes()]
    if isinstance(obj, dict):
        return [b for v in obj.values() for b in snapshot(v)]
    if isinstance(obj, (list, tuple)):
        return [b for v in obj for b in snapshot(v)]
    return []


def shared_buffer_args():
    buf = np.zeros(30, np.float32)
    a = adam_args()
    return with_(a, exp_avgs=buf[:10], exp_avg_sqs=buf[5:15])  # overlap by 5 elements


def second_tensor_bad():
    a = adam_args(count=3)
    a["grads"][2] = a["grads"][2][:5].copy()  # the error is in the last tensor: nothing may be written
    return a


ADAM_CASES = [
    # (description, kwargs, exception, message fragment)
    ("grads float64", lambda a: with_(a, grads=a["grads"].astype(np.float64)), TypeError, "grads"),
    ("params int32", lambda a: with_(a, params=a["params"].astype(np.int32)), TypeError, "params"),
    ("float16", lambda a: {k: v.astype(np.float16) for k, v in a.items()}, TypeError, "exp_avgs has dtype float16"),
    ("big-endian", lambda a: {k: v.astype(">f4") for k, v in a.items()}, TypeError, "dtype"),
    ("shape mismatch", lambda a: with_(a, exp_avgs=np.zeros(11, np.float32)), ValueError, "exp_avgs has shape"),
    ("2-d vs 1-d", lambda a: with_(a, grads=a["grads"].reshape(2, 5)), ValueError, "grads has shape"),
    ("non-contiguous param", lambda a: with_(a, params=np.zeros(20, np.float32)[::2]), ValueError,
     "params is not C-contiguous"),
    ("non-contiguous grad", lambda a: with_(a, grads=np.zeros(20, np.float32)[::2]), ValueError,
     "grads is not C-contiguous"),
    ("Fortran 2-d", lambda a: {k: np.asfortranarray(v.reshape(2, 5)) for k, v in a.items()}, ValueError,
     "C-contiguous"),
    ("read-only param", lambda a: with_(a, params=readonly(a["params"])), ValueError, "params is read-only"),
    ("read-only state", lambda a: with_(a, exp_avg_sqs=readonly(a["exp_avg_sqs"])), ValueError,
     "exp_avg_sqs is read-only"),
    ("param is grad", lambda a: with_(a, grads=a["params"]), ValueError, "overlap"),
    ("state views overlap", lambda a: shared_buffer_args(), ValueError, "overlap"),
    ("list lengths differ", lambda a: with_(adam_args(count=3), grads=adam_args(count=2)["grads"]), ValueError,
     "grads has 2 arrays but params has 3"),
    ("list and array mixed", lambda a: with_(adam_args(count=1), grads=a["grads"]), TypeError, "grads must be a list"),
    ("array and list mixed", lambda a: with_(a, grads=[a["grads"]]), TypeError, "grads must be a numpy.ndarray"),
    ("python list param", lambda a: with_(a, params=[1.0, 2.0]), TypeError, r"params\[0\] must be a numpy.ndarray"),
    ("error in last tensor", lambda a: second_tensor_bad(), ValueError, r"grads\[2\] has shape"),
    ("params None", lambda a: with_(a, params=None), TypeError, "params"),
]

ADAM_HYPER_CASES = [
    (dict(lr=-1e-3), "lr"), (dict(lr=float("nan")), "lr"), (dict(lr=float("inf")), "lr"),
    (dict(eps=-1e-8), "eps"), (dict(eps=float("nan")), "eps"),
    (dict(beta1=1.0), "beta1"), (dict(beta1=-0.1), "beta1"),
    (dict(beta2=1.0), "beta2"), (dict(beta2=float("nan")), "beta2"),
    (dict(weight_decay=-0.1), "weight_decay"), (dict(weight_decay=float("nan")), "weight_decay"),
    (dict(step=0), "step"), (dict(step=-3), "step"),
    (dict(amsgrad=True), "max_exp_avg_sqs is required"),
    (dict(decoupled_weight_decay=True, lr=1.0, weight_decay=2.0), "lr \\* weight_decay"),
]


@pytest.mark.parametrize("desc,make,exc,match", ADAM_CASES, ids=[c[0] for c in ADAM_CASES])
def test_adam_bad_arrays(desc, make, exc, match):
    args = make(adam_args())
    before = snapshot(args)
    with pytest.raises(exc, match=match):
        fusedopt.adam_(**args, step=1)
    assert snapshot(args) == before


@pytest.mark.parametrize("opts,match", ADAM_HYPER_CASES, ids=[str(c[0]) for c in ADAM_HYPER_CASES])
def test_adam_bad_hyperparameters(opts, match):
    args = adam_args()
    opts = {"step": 1, **opts}
    before = snapshot(args)
    with pytest.raises(ValueError, match=match):
        fusedopt.adam_(**args, **opts)
    assert snapshot(args) == before


def test_wrong_python_types_are_type_errors():
    args = adam_args()
    before = snapshot(args)
    with pytest.raises(TypeError):
        fusedopt.adam_(**args, step=1, lr="0.1")
    with pytest.raises(TypeError):
        fusedopt.adam_(**args, step=1.5)
    with pytest.raises(TypeError):
        fusedopt.adam_(*args.values(), 1)  # step is keyword-only
    assert snapshot(args) == before


def test_none_for_a_bool_is_a_type_error():
    """pybind11's own bool conversion takes None as False (batchnorm_forward(training=None) ran in
    eval mode): every bool argument refuses it, naming it, before anything is written."""
    args = adam_args()
    before = snapshot(args)
    for flag in ("maximize", "amsgrad", "skip_if_nonfinite"):
        with pytest.raises(TypeError, match=f"adam_: {flag} must be a bool, got None"):
            fusedopt.adam_(**args, step=1, lr=0.1, **{flag: None})
    assert snapshot(args) == before
    p, g, buf = sgd_args()
    with pytest.raises(TypeError, match="nesterov must be a bool"):
        fusedopt.sgd_(p, g, buf, lr=0.1, momentum=0.9, nesterov=None)
    with pytest.raises(TypeError, match="error_if_nonfinite must be a bool"):
        fusedopt.clip_grad_norm_([g], 1.0, error_if_nonfinite=None)
    x = np.ones((4, 3), np.float32)
    stats = [np.zeros(3, np.float32), np.ones(3, np.float32)]
    kept = [s.copy() for s in stats]
    for flag in ("training", "relu"):
        with pytest.raises(TypeError, match=f"{flag} must be a bool, got None"):
            fusedopt.batchnorm_forward(x, None, None, *stats, **{flag: None})
    assert all(np.array_equal(a, b) for a, b in zip(stats, kept))
    fusedopt.adam_(**args, step=1, lr=0.1, maximize=np.bool_(False))  # numpy's bool is a bool


def sgd_args():
    rng = np.random.default_rng(1)
    return [rng.standard_normal(8).astype(np.float32) for _ in range(3)]


@pytest.mark.parametrize("opts,match", [
    (dict(lr=-0.1), "lr"),
    (dict(lr=0.1, momentum=-0.5), "momentum"),
    (dict(lr=0.1, momentum=1.5), "momentum"),
    (dict(lr=0.1, momentum=0.9, dampening=1.5), "dampening"),
    (dict(lr=0.1, weight_decay=-1.0), "weight_decay"),
    (dict(lr=0.1, nesterov=True), "Nesterov momentum requires"),
    (dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "Nesterov momentum requires"),
    (dict(lr=0.1, momentum=0.9, step=0), "step"),
    (dict(lr=0.1, momentum=0.9, no_buffers=True), "momentum_buffers is required"),
])
def test_sgd_bad_input(opts, match):
    p, g, buf = sgd_args()
    before = snapshot([p, g, buf])
    no_buffers = opts.pop("no_buffers", False)
    with pytest.raises(ValueError, match=match):
        fusedopt.sgd_(p, g, None if no_buffers else buf, **opts)
    assert snapshot([p, g, buf]) == before


@pytest.mark.parametrize("opts,match", [
    (dict(step=1, lr=-1.0), "lr"),
    (dict(step=1, lr_decay=-1.0), "lr_decay"),
    (dict(step=1, eps=-1.0), "eps"),
    (dict(step=1, weight_decay=float("nan")), "weight_decay"),
    (dict(step=0), "step"),
])
def test_adagrad_bad_input(opts, match):
    p, g, s = sgd_args()
    before = snapshot([p, g, s])
    with pytest.raises(ValueError, match=match):
        fusedopt.adagrad_(p, g, s, **opts)
    assert snapshot([p, g, s]) == before


@pytest.mark.parametrize("opts,match", [
    (dict(lr=-1.0), "lr"),
    (dict(alpha=1.5), "alpha"),
    (dict(alpha=-0.1), "alpha"),
    (dict(eps=float("nan")), "eps"),
    (dict(momentum=-0.1), "momentum"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(momentum=0.9), "momentum_buffers is required"),
    (dict(centered=True), "grad_avgs is required"),
])
def test_rmsprop_bad_input(opts, match):
    p, g, s = sgd_args()
    before = snapshot([p, g, s])
    with pytest.raises(ValueError, match=match):
        fusedopt.rmsprop_(p, g, s, **opts)
    assert snapshot([p, g, s]) == before


def four_arrays():
    rng = np.random.default_rng(2)
    return [np.abs(rng.standard_normal(8)).astype(np.float32) for _ in range(4)]


# None where a call uses an array (these crashed the interpreter before the bindings told None
# meaning "not used" apart from None given for an array the call needs)
NONE_CASES = [
    ("sgd_ grads", lambda p, g, a, b: fusedopt.sgd_(p, None, lr=0.1), "grads"),
    ("sgd_ a momentum buffer", lambda p, g, a, b: fusedopt.sgd_([p], [g], [None], lr=0.1, momentum=0.9),
     r"momentum_buffers\[0\]"),
    ("adagrad_ state_sums", lambda p, g, a, b: fusedopt.adagrad_(p, g, None, step=1), "state_sums"),
    ("rmsprop_ square_avgs", lambda p, g, a, b: fusedopt.rmsprop_(p, g, None), "square_avgs"),
    ("rmsprop_ a grad_avg", lambda p, g, a, b: fusedopt.rmsprop_([p], [g], [a], centered=True, grad_avgs=[None]),
     r"grad_avgs\[0\]"),
    ("adam_ grads", lambda p, g, a, b: fusedopt.adam_(p, None, a, b, step=1), "grads"),
    ("adam_ exp_avgs", lambda p, g, a, b: fusedopt.adam_(p, g, None, b, step=1), "exp_avgs"),
    ("adam_ an exp_avg_sq", lambda p, g, a, b: fusedopt.adam_([p], [g], [a], [None], step=1), r"exp_avg_sqs\[0\]"),
    ("clip_grad_norm_ grads", lambda p, g, a, b: fusedopt.clip_grad_norm_([g, None], 1.0), r"grads\[1\]"),
]


@pytest.mark.parametrize("desc,call,match", NONE_CASES, ids=[c[0] for c in NONE_CASES])
def test_none_for_an_array_the_call_uses(desc, call, match):
    arrays = four_arrays()
    before = snapshot(arrays)
    with pytest.raises(TypeError, match=match):
        call(*arrays)
    assert snapshot(arrays) == before


def test_the_call_holds_its_arrays():
    """The kernels run without the GIL on arrays taken from the lists: the call holds a reference
    to each, so none is freed under it (here a list that makes a new array each time it is
    indexed, which would be freed at once; the sanitizer build reports a use after free)."""
    class Copies(list):
        def __getitem__(self, i):
            return super().__getitem__(i).copy()
    p, g, a, b = arrays = four_arrays()
    before = snapshot(arrays)
    assert fusedopt.adam_(Copies([p]), Copies([g]), Copies([a]), Copies([b]), step=1)
    assert snapshot(arrays) == before  # the copies were updated


def test_rmsprop_overlapping_optional_state():
    p, g, s = sgd_args()
    before = snapshot([p, g, s])
    with pytest.raises(ValueError, match="overlap"):
        fusedopt.rmsprop_(p, g, s, centered=True, grad_avgs=s)
    assert snapshot([p, g, s]) == before


@pytest.mark.parametrize("n", [0, 1, 2, 3, 31, 33])
def test_any_size_works(isa, dtype, n):
    from fusedopt import reference
    rng = np.random.default_rng(n)
    a = [rng.standard_normal(n).astype(dtype) for _ in range(4)]
    a[3] = np.abs(a[3])
    b = [x.copy() for x in a]
    fusedopt.adam_(*a, step=3)
    reference.adam_(*b, step=3)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_empty_list_is_a_no_op():
    fusedopt.adam_([], [], [], [], step=1)
    fusedopt.sgd_([], [], lr=0.1)


def test_unknown_isa_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown"):
        fusedopt.set_isa("avx9000")
    for name in ("avx512", "avx2", "neon", "sse2"):
        if name not in fusedopt.available_isas():
            with pytest.raises(ValueError, match="usable here"):
                fusedopt.set_isa(name)


# ---- every scalar argument of every public function: a wrong type or an out-of-range number is
# an error naming it (pybind11's own TypeError names none: "incompatible function arguments")

def valid_calls():
    """function name -> (positional arrays, keyword arguments) of a call that runs."""
    p, g, a, b = four_arrays()
    x = np.random.default_rng(3).standard_normal((4, 3))
    mean, invstd = x.mean(axis=0), 1 / x.std(axis=0)
    return {
        "sgd_": ([p, g, a], dict(lr=0.1, momentum=0.9)),
        "adagrad_": ([p, g, a], dict(step=1)),
        "rmsprop_": ([p, g, a], {}),
        "adam_": ([p, g, a, b], dict(step=1)),
        "adamw_": ([p, g, a, b], dict(step=1)),
        "all_finite": ([g], {}),
        "grad_norm": ([g], {}),
        "clip_grad_norm_": ([g], dict(max_norm=1.0)),
        "clip_grad_value_": ([g], dict(clip_value=1.0)),
        "batchnorm_forward": ([x, np.ones(3), np.zeros(3), np.zeros(3), np.ones(3)], {}),
        "batchnorm_backward": ([np.ones_like(x), x, np.ones(3), mean, invstd], {}),
    }


INT_ARGUMENTS = {"step", "axis"}
OPTIONAL_ARGUMENTS = {("sgd_", "step"), ("rmsprop_", "step"), ("adam_", "grad_scale"), ("adamw_", "grad_scale"),
                      ("sgd_", "grad_scale"),
                      ("adagrad_", "grad_scale"), ("rmsprop_", "grad_scale"), ("all_finite", "grad_scale")}
BAD_VALUES = {  # kind -> [(value, exception)]
    "float": [("0.001", TypeError), (10**400, ValueError), ([0.1], TypeError), (None, TypeError)],
    "int": [(1.5, TypeError), ("1", TypeError), (2**63, ValueError), (-2**63 - 1, ValueError), (None, TypeError),
            (np.float64(2.0), TypeError), (True, TypeError), (np.True_, TypeError),
            (decimal.Decimal("1.5"), TypeError), (fractions.Fraction(3, 1), TypeError)],
    "bool": [("yes", TypeError), ([1], TypeError)],
}


def scalar_arguments():
    """(function name, argument, kind) for every scalar argument of every public function."""
    import inspect
    out = []
    for name in valid_calls():
        for arg, param in inspect.signature(getattr(fusedopt, name)).parameters.items():
            if arg in ("lr", "max_norm", "clip_value", "step") or isinstance(param.default, (bool, int, float)) \
                    or arg == "grad_scale":
                kind = ("bool" if isinstance(param.default, bool) else "int" if arg in INT_ARGUMENTS else "float")
                out.append((name, arg, kind))
    return out


@pytest.mark.parametrize("name,arg,kind", scalar_arguments(), ids=[f"{n}-{a}" for n, a, _ in scalar_arguments()])
def test_a_bad_scalar_argument_is_named(name, arg, kind):
    arrays, kwargs = valid_calls()[name]
    function = getattr(fusedopt, name)
    for value, exc in BAD_VALUES[kind]:
        if value is None and (name, arg) in OPTIONAL_ARGUMENTS:
            continue
        before = snapshot(arrays)
        with pytest.raises(exc, match=rf"^{name}: {arg} (must be|is out of range|is too large)") as info:
            function(*arrays, **{**kwargs, arg: value})
        assert "incompatible function arguments" not in str(info.value)
        assert snapshot(arrays) == before, f"{arg}={value!r} wrote"
    function(*arrays, **kwargs)  # and the call itself is valid


# (update, its state arguments, its options)
SHARED_GRAD_CASES = [
    ("sgd_", ["momentum_buffers"], dict(lr=0.1, momentum=0.9)),
    ("adagrad_", ["state_sums"], dict(lr=0.1, step=1)),
    ("rmsprop_", ["square_avgs"], dict(lr=0.01)),
    ("adamw_", ["exp_avgs", "exp_avg_sqs"], dict(lr=0.01, step=3)),
]


@pytest.mark.parametrize("update,states,opts", SHARED_GRAD_CASES, ids=[c[0] for c in SHARED_GRAD_CASES])
def test_grads_sharing_memory_are_each_read(isa, update, states, opts):
    """Grads are only read: params may be given one grad array, or overlapping views of one
    buffer (torch.optim steps two params given one grad tensor), each param then updated as with
    its own copy. With unscale_grads the update writes the grads back: refused, nothing written."""
    buffer = np.random.default_rng(1).standard_normal(40).astype(np.float32)
    grads = [buffer[:10], buffer[:10], buffer[5:15], buffer[30:40]]

    def arguments(grads):
        a = adam_args(count=4)
        return dict(params=a["params"], grads=grads, **{s: [np.abs(x) for x in a["exp_avg_sqs"]] for s in states})
    expected, shared = arguments([g.copy() for g in grads]), arguments(grads)
    getattr(fusedopt, update)(**expected, **opts)
    getattr(fusedopt, update)(**shared, **opts)
    assert snapshot(shared) == snapshot(expected)
    before = snapshot(shared)
    with pytest.raises(ValueError, match=r"grads\[0\] and grads\[1\] overlap in memory; an array that is written"):
        getattr(fusedopt, update)(**shared, **opts, grad_scale=2.0, unscale_grads=True)
    assert snapshot(shared) == before


def test_overlapping_finds_the_first_conflict_in_the_callers_order():
    """fusedopt._core.overlapping (the one check of every call and of the classes' steps) against
    the pairwise definition, on random views of one buffer, some written: the first array that
    shares a byte with one before it, one of the two written, and the first such one before it."""
    rng = np.random.default_rng(7)
    buffer = np.zeros(64, np.float32)
    for _ in range(3000):
        n = int(rng.integers(1, 9))
        bounds = [sorted(rng.integers(0, 65, 2)) for _ in range(n)]
        arrays = [buffer[lo:hi] for lo, hi in bounds]
        written = [bool(w) for w in rng.integers(0, 2, n)]
        expected = next(((i, j) for j in range(n) for i in range(j)
                         if (written[i] or written[j]) and arrays[i].size and arrays[j].size
                         and bounds[i][0] < bounds[j][1] and bounds[j][0] < bounds[i][1]), None)
        assert fusedopt._core.overlapping(arrays, written) == expected, (bounds, written)


def test_the_issue_examples():
    args = adam_args()
    for kw, exc, match in [(dict(step=1.5), TypeError, "step must be an int"),
                           (dict(step=1, lr="0.001"), TypeError, "lr must be a real number"),
                           (dict(step=1, lr=10**400), ValueError, "lr is too large for a float"),
                           (dict(step=2**63), ValueError, r"step is out of range \(must be less than 2\*\*63\)"),
                           (dict(step=1, beta1=None), TypeError, "beta1 must be a real number")]:
        with pytest.raises(exc, match=match):
            fusedopt.adam_(**args, **kw)


def test_other_type_errors_pass_through():
    """A TypeError that is not pybind11's refusal of an argument keeps its own message."""
    args = adam_args()
    with pytest.raises(TypeError, match="grads must be a numpy.ndarray"):
        fusedopt.adam_(**with_(args, grads=[args["grads"]]), step=1)
