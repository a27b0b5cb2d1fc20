"""The benchmark suite (python -m fusedopt.bench) and its bandwidth probe."""
import json

import numpy as np
import pytest

import fusedopt
from fusedopt import _core, bench

STREAM_MIN_ELEMENTS = (8 << 20) // 4  # float32 elements of kStreamMinBytes: the probe streams its output


def misaligned(n, dtype, rng):
    """n random values starting one element past the allocation's alignment."""
    return rng.standard_normal(n + 1).astype(dtype)[1:]


@pytest.mark.parametrize("n", [1, 37, 4099, STREAM_MIN_ELEMENTS + 3], ids=["1", "37", "4099", "streamed"])
def test_stream_probe_moves_what_it_says(isa, dtype, n):
    """s = sum(read_only); a = a + s for each read_write array; w = s for the write_only one,
    with the output misaligned so the streamed path writes its first partial line in order."""
    rng = np.random.default_rng(n)
    rw = [misaligned(n, dtype, rng) for _ in range(2)]
    ro = [misaligned(n, dtype, rng) for _ in range(2)]
    wo = misaligned(n, dtype, rng)
    s = ro[0] + ro[1]
    expect_rw = [a + s for a in rw]
    _core.stream_probe(rw, ro, [wo])
    for a, e in zip(rw, expect_rw):
        np.testing.assert_array_equal(a, e)
    np.testing.assert_array_equal(wo, s)


def test_stream_probe_write_only_list(dtype):
    """The batch-norm probes: no read-write array; a multi-tensor write-only list."""
    rng = np.random.default_rng(0)
    x = [rng.standard_normal(n).astype(dtype) for n in (5, 100, 3000)]
    out = [np.empty_like(a) for a in x]
    _core.stream_probe([], [x], [out])
    for a, o in zip(x, out):
        np.testing.assert_array_equal(o, a)


def test_stream_probe_bad_counts():
    a = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="at least one"):
        _core.stream_probe([], [])
    with pytest.raises(ValueError, match="write-only"):
        _core.stream_probe([a], [], [a.copy(), a.copy()])


def test_bench_runs_and_writes_json(tmp_path, capsys, threads):
    """A small run of the suite: both tables printed, every figure positive in the JSON."""
    path = tmp_path / "bench.json"
    bench.main(["--quick", "--threads", "1", "--filter", "^adam 4K$|^batchnorm 256x1024", "--json", str(path)])
    out = capsys.readouterr().out
    assert "| adam 4K | 1 |" in out and "| batchnorm 256x1024 NC | 1 |" in out
    data = json.loads(path.read_text())
    assert data["machine"]["isa"] == fusedopt.isa()
    (opt_row,), (bn_row,) = data["optimizer_rows"], data["batchnorm_rows"]
    for key in ("fusedopt_s", "optim_s", "numpy_s", "probe_s"):
        assert opt_row[key] > 0
    for key in ("fusedopt_fwd_s", "fusedopt_bwd_s", "probe_fwd_s", "probe_bwd_s", "numpy_fwd_s", "numpy_bwd_s"):
        assert bn_row[key] > 0
