"""The benchmark suite (python -m fusedopt.bench) and its bandwidth probe."""
import importlib
import io
import json
import re
import sys

import numpy as np
import pytest

import fusedopt
from fusedopt import _core, bench
from fusedopt.bench import cli, deps
from fusedopt.bench.section import Case, Section, markdown, percent, ratio
from fusedopt.bench.timing import Timer, noisy, put

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


@pytest.mark.parametrize("n", [1, 37, 4099], ids=["1", "37", "4099"])
def test_stream_probe_read_only(isa, dtype, n):
    """The two-pass probe's first pass: only read-only arrays (one or two, or lists of them), none changed."""
    rng = np.random.default_rng(n)
    ro = [misaligned(n, dtype, rng) for _ in range(2)]
    before = [a.copy() for a in ro]
    _core.stream_probe([], ro[:1])
    _core.stream_probe([], ro)
    _core.stream_probe([], [[ro[0], ro[1][:n // 2]]])
    for a, b in zip(ro, before):
        np.testing.assert_array_equal(a, b)


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
    for key in ("fusedopt_fwd_s", "fusedopt_bwd_s", "probe_fwd_s", "probe_bwd_s", "probe2_fwd_s", "probe2_bwd_s",
                "numpy_fwd_s", "numpy_bwd_s"):
        assert bn_row[key] > 0
        assert bn_row[key.replace("_s", "_median_s")] >= bn_row[key]


def run_main(capsys, *argv):
    """(exit code, stdout, stderr) of python -m fusedopt.bench argv."""
    try:
        code = bench.main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, message", [
    (["--filter", "nomatch"], "selects no case"),
    (["--filter", "("], "not a regular expression"),
    (["--threads", "0"], "must be from 1 to 1024"),
    (["--threads", "2000"], "must be from 1 to 1024"),
    (["--threads", "1,x"], "comma-separated integers"),
    (["--repeats", "0"], "must be >= 1"),
    (["--noisy", "0.5"], "must be >= 1.0"),
    (["--json", "/no/such/folder/out.json"], "does not exist"),
    (["--json", "."], "is a folder"),
    (["--plot", ""], "an empty path"),
])
def test_bad_arguments_fail_before_running(capsys, argv, message):
    code, out, err = run_main(capsys, *argv)
    assert code == 2 and message in err
    assert out == ""  # nothing ran: not even the header


@pytest.mark.parametrize("module, argv, message", [
    (module, argv, message)
    for module in ("fusedopt.bench_lowbit", "fusedopt.torch.bench", "fusedopt.torch.bench_batchnorm")
    for argv, message in ((["--threads", "0"], "must be from 1 to 1024"), (["--threads", "abc"], "comma-separated"),
                          (["--json", "."], "is a folder"))
    if not (module == "fusedopt.torch.bench" and argv[0] == "--json")  # (it writes no JSON)
])
def test_other_bench_clis_check_arguments_before_running(capsys, module, argv, message):
    """The low-bit and PyTorch benches take the same checked arguments (where they have them)."""
    if module.startswith("fusedopt.torch"):
        pytest.importorskip("torch")
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    assert info.value.code == 2 and message in err and out == ""


def test_plot_without_matplotlib_fails_at_start(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(deps, "have_matplotlib", lambda: False)
    code, out, err = run_main(capsys, "--quick", "--plot", str(tmp_path / "b.png"))
    assert code == 2 and 'pip install ".[bench]"' in err and out == ""


def test_list_names_the_cases_without_running(capsys):
    code, out, _ = run_main(capsys, "--quick", "--list", "--filter", "adam")
    assert code == 0
    assert out.split("\n")[:2] == ["adam 4K", "adam 1M"] and "# fusedopt" not in out


def table_rows(out, first_column):
    """The cells of the rows of the table whose header starts with `first_column`, by column name."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    head = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(head, (c.strip() for c in line.strip("|").split("|")))))
    return head, rows


def test_two_thread_counts_without_torch(capsys, monkeypatch, threads):
    """Torch missing: the header says how to get its columns. The header names the thread
    counts; column names are distinct; the NumPy column (one thread) is the same figure in every
    row of a case, in both sections; the progress (stderr is no terminal here) is a line per step."""
    monkeypatch.setattr(deps, "torch", None)
    code, out, err = run_main(capsys, "--quick", "--repeats", "2", "--threads", "2,1",
                              "--filter", "^adam 4K$|^batchnorm 256x1024")
    assert code == 0
    assert "threads 1, 2" in out and 'torch not installed (pip install ".[bench]"' in out
    opt_head, opt_rows = table_rows(out, "case")
    assert len(set(opt_head)) == len(opt_head)
    assert [r["threads"] for r in opt_rows] == ["1", "2"]
    assert opt_rows[0]["NumPy ref ns/el"] == opt_rows[1]["NumPy ref ns/el"] != "-"
    assert all(r["torch ns/el"] == "-" and r["fusedopt vs torch"] == "-" for r in opt_rows)
    bn_out = out[out.index("Batch normalization"):]
    bn_head, bn_rows = table_rows(bn_out, "case")
    assert len(set(bn_head)) == len(bn_head)
    assert "fwd % of probe speed" in bn_head and "bwd % of probe speed" in bn_head
    assert bn_rows[0]["NumPy ref fwd + bwd ms"] == bn_rows[1]["NumPy ref fwd + bwd ms"] != "-"
    for r in bn_rows:
        for column in ("fwd % of probe speed", "bwd % of probe speed"):
            assert re.fullmatch(r"\d+%|noisy", r[column])
    assert "\r" not in err
    assert err.splitlines() == ["[1/4] adam 4K, 1 thread", "[2/4] adam 4K, 2 threads",
                                "[3/4] batchnorm 256x1024 NC, 1 thread", "[4/4] batchnorm 256x1024 NC, 2 threads"]


def test_progress_bar_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty, log = Terminal(), io.StringIO()
    for stream in (tty, log):
        progress = cli.Progress(2, stream)
        progress.step("a")
        progress.step("b")
        progress.close()
    assert tty.getvalue().count("\r") >= 2 and "\n" not in tty.getvalue()
    assert log.getvalue() == "[1/2] a\n[2/2] b\n"


def test_noisy_timings_are_flagged_and_enter_no_ratio():
    one = {"elements": 10}
    put(one, "fusedopt", bench.timing.Timing(1e-6, 1.1e-6))
    put(one, "torch", bench.timing.Timing(2e-6, 2.1e-6))
    one["noisy"] = noisy(one, 1.5)
    assert one["noisy"] == [] and ratio(one, "torch", "fusedopt") == "2.00x"
    # repeats that disagree: median 3x the best
    two = {"elements": 10}
    put(two, "fusedopt", bench.timing.Timing(1e-6, 1.1e-6))
    put(two, "torch", bench.timing.Timing(2e-6, 6e-6))
    two["noisy"] = noisy(two, 1.5, one)
    assert two["noisy"] == ["torch"] and ratio(two, "torch", "fusedopt") == "noisy"
    assert percent(two, "fusedopt", "torch") == "noisy"
    # every repeat slow, but 100x the time at fewer threads: flagged all the same
    three = {"elements": 10}
    put(three, "fusedopt", bench.timing.Timing(1e-6, 1e-6))
    put(three, "torch", bench.timing.Timing(2e-4, 2.1e-4))
    three["noisy"] = noisy(three, 1.5, one)
    assert three["noisy"] == ["torch"] and ratio(three, "torch", "fusedopt") == "noisy"
    # not measured
    four = {"elements": 10}
    put(four, "fusedopt", bench.timing.Timing(1e-6, 1e-6))
    put(four, "torch", None)
    four["noisy"] = noisy(four, 1.5, one)
    assert four["noisy"] == [] and ratio(four, "torch", "fusedopt") == "-"


def test_timer_best_and_median():
    calls = []
    t = Timer(min_batch_seconds=1e-4, repeats=5).time(lambda: calls.append(1))
    assert 0 < t.best <= t.median and len(calls) > 5


def test_markdown_refuses_repeated_column_names():
    with pytest.raises(AssertionError):
        markdown(["a", "vs torch", "vs torch"], [])


def test_a_new_section_runs_prints_and_is_written(capsys, monkeypatch, tmp_path, threads):
    """What another module adds: cases whose setup returns a measure function, and a table."""
    measured = []

    def setup():
        def measure(timer, threads):
            measured.append(threads)
            row = {"elements": 4}
            put(row, "mine", timer.time(lambda: None))
            return row
        return measure

    extra = Section(key="extra", title="An extra section", cases=lambda quick: [Case("extra one", setup)],
                    table=lambda rows: markdown(["case", "threads"], [[r["case"], str(r["threads"])] for r in rows]))
    monkeypatch.setattr(cli, "SECTIONS", [*cli.SECTIONS, extra])
    path = tmp_path / "b.json"
    code, out, _ = run_main(capsys, "--quick", "--threads", "1,2", "--filter", "^extra", "--json", str(path))
    assert code == 0 and measured == [1, 2]
    assert "An extra section" in out and "| extra one | 2 |" in out
    data = json.loads(path.read_text())
    assert [r["threads"] for r in data["extra_rows"]] == [1, 2] and data["optimizer_rows"] == []
    assert data["extra_rows"][0]["mine_s"] > 0


def test_plot_draws_every_panel(tmp_path):
    pytest.importorskip("matplotlib")
    from fusedopt.bench.plot import plot

    def row(case, threads, elements, tensors, **seconds):
        r = {"case": case, "threads": threads, "elements": elements, "tensors": tensors, "noisy": []}
        for key, s in seconds.items():
            put(r, key, bench.timing.Timing(s, s))
        return r

    opt = [row(f"adam {n}", t, n, 1, fusedopt=n * 1e-9, torch=n * 2e-9 * (1000 if t == 2 else 1), probe=n * 1e-9,
               optim=n * 1e-9) for n in (4096, 1 << 20) for t in (1, 2)]
    for r in opt:
        r["optimizer"] = "adam"
    opt += [row("adam mlp", t, 1000, 6, fusedopt=1e-6, optim=2e-6, torch=3e-6, probe=1e-6) for t in (1, 2)]
    bn = [row("batchnorm 8x8 NC", t, 64, 1, fusedopt_fwd=1e-7, fusedopt_bwd=1e-7, torch_fwd=1e-7, torch_bwd=1e-7,
              probe_fwd=1e-8, probe_bwd=1e-8) for t in (1, 2)]
    path = tmp_path / "bench.png"
    plot({"optimizer": opt, "batchnorm": bn}, [1, 2], str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_more_suites_need_torch_and_run_after_the_tables(capsys, monkeypatch, tmp_path):
    """--more: a torch suite without torch fails before anything runs; a suite that runs prints
    its table after the sections' tables and writes its rows to the JSON file."""
    monkeypatch.setattr(deps, "torch", None)
    code, out, err = run_main(capsys, "--quick", "--more", "torch")
    assert code == 2 and 'needs torch: pip install ".[bench]"' in err and out == ""

    import types

    suite = types.ModuleType("fake_suite")
    suite.rows = lambda quick, threads: [{"case": "fake", "threads": t, "quick": quick} for t in threads]
    suite.table = lambda rows: "| fake table |"
    monkeypatch.setitem(sys.modules, "fake_suite", suite)
    monkeypatch.setitem(cli.MORE, "fake", ("fake_suite", False))
    path = tmp_path / "out.json"
    code, out, _ = run_main(capsys, "--quick", "--repeats", "1", "--threads", "1", "--filter", "^adam 4K$",
                            "--more", "fake", "--json", str(path))
    assert code == 0 and out.index("| fake table |") > out.index("| case |")
    assert json.loads(path.read_text())["fake_rows"] == [{"case": "fake", "threads": 1, "quick": True}]


def test_a_full_run_runs_the_torch_suites(capsys, monkeypatch):
    """A full run (no --quick, no --filter) with torch installed runs cli.FULL_RUN_MORE after the
    tables, in full mode; --quick or --filter runs only the suites asked for."""
    pytest.importorskip("torch")
    import types

    suite = types.ModuleType("fake_full_suite")
    suite.rows = lambda quick, threads: [{"quick": quick}]
    suite.table = lambda rows: f"| fake suite, quick={rows[0]['quick']} |"
    monkeypatch.setitem(sys.modules, "fake_full_suite", suite)
    monkeypatch.setitem(cli.MORE, "fake", ("fake_full_suite", False))
    monkeypatch.setattr(cli, "FULL_RUN_MORE", ("fake",))
    monkeypatch.setattr(cli, "run", lambda selected, *args: {s.key: [] for s, _ in selected})  # no timing
    code, out, _ = run_main(capsys, "--threads", "1")
    assert code == 0 and "| fake suite, quick=False |" in out
    for argv in (["--quick"], ["--filter", "adam"]):
        code, out, _ = run_main(capsys, "--threads", "1", *argv)
        assert code == 0 and "fake suite" not in out
